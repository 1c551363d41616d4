// The data-aware step inside the job manager, on the digits zoo: a Fisher or
// RegMean request computes the same statistics as the standalone estimators
// and gives a bit-identical result to a one-shot merge that names them; the
// statistics are cached by content; missing programs and data are named.
#include "mergeserve/jobs/data_aware_merge.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "jobs/digits_zoo_fixture.h"
#include "jobs_test_util.h"
#include "mergeserve/eval/fisher_estimator.h"
#include "mergeserve/eval/gram_estimator.h"
#include "mergeserve/eval/program_evaluator.h"
#include "mergeserve/jobs/job_manager.h"
#include "mergeserve/jobs/sweep_runner.h"
#include "mergeserve/jobs/task_evaluator.h"
#include "mergeserve/store/sqlite_database.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using ::testing::HasSubstr;
using DataAwareMergeTest = DigitsZooTest;

TEST_F(DataAwareMergeTest, FisherInsideTheRequestEqualsTheStandaloneEstimate) {
  JobRecord job = Run(Yaml("fisher", "normalize: true, examples: 64"));
  ASSERT_EQ(job.state, JobState::kSucceeded) << job.error_message;
  EXPECT_EQ(jobs_->stats_counters().misses, 4);
  // The same Fishers computed outside, named in a one-shot merge.
  zoo_dir_ = testing::TempDir("standalone");
  for (const char* t : kTasks) {
    FisherOptions fo;
    fo.max_examples = 64;
    ASSERT_TRUE(EstimateFisher(zoo_ + "/" + t + "/program.pt", zoo_ + "/" + t,
                               zoo_ + "/data/" + t + "_fisher.safetensors",
                               zoo_dir_ + "/stats_" + t, fo)
                    .ok());
  }
  auto config =
      MergeConfig::FromYaml(Yaml("fisher", "normalize: true", "fisher"), zoo_);
  ASSERT_TRUE(config.ok()) << config.status();
  MergeOptions mo;
  mo.output_dir = zoo_dir_ + "/out";
  ASSERT_TRUE(RunMerge(*config, mo).ok());
  EXPECT_EQ(testing::ReadModel(job.result_dir),
            testing::ReadModel(mo.output_dir));

  // Another request over the same experts and data reuses the statistics.
  JobRecord again = Run(Yaml("fisher", "normalize: false, examples: 64"));
  ASSERT_EQ(again.state, JobState::kSucceeded) << again.error_message;
  EXPECT_EQ(jobs_->stats_counters().misses, 4);
  EXPECT_EQ(jobs_->stats_counters().hits, 4);
  // Different settings are different statistics.
  JobRecord other = Run(Yaml("fisher", "examples: 32"));
  ASSERT_EQ(other.state, JobState::kSucceeded) << other.error_message;
  EXPECT_EQ(jobs_->stats_counters().misses, 8);
}

TEST_F(DataAwareMergeTest, StatisticsOneReplicaComputedAreReusedByAnother) {
  // Replica A computes the Fishers into the shared data dir.
  JobRecord first = Run(Yaml("fisher", "normalize: true, examples: 48"));
  ASSERT_EQ(first.state, JobState::kSucceeded) << first.error_message;
  EXPECT_EQ(jobs_->stats_counters().misses, 4);
  jobs_.reset();
  // Replica B: its own process state, the same store and data dir.
  JobManager::Options o;
  o.data_dir = registry_->data_dir();
  o.registry = registry_.get();
  o.replica_id = "replica-b";
  auto b = JobManager::Create(o);
  ASSERT_TRUE(b.ok()) << b.status();
  jobs_ = std::move(*b);
  JobRecord second = Run(Yaml("fisher", "normalize: false, examples: 48"));
  ASSERT_EQ(second.state, JobState::kSucceeded) << second.error_message;
  EXPECT_EQ(second.replica, "replica-b");
  EXPECT_EQ(jobs_->stats_counters().hits, 4);
  EXPECT_EQ(jobs_->stats_counters().misses, 0);
}

TEST_F(DataAwareMergeTest, RegMeanInsideTheRequestEqualsTheStandaloneGrams) {
  JobRecord job = Run(Yaml("regmean", "alpha: 0.9, ridge: 0.001"));
  ASSERT_EQ(job.state, JobState::kSucceeded) << job.error_message;
  zoo_dir_ = testing::TempDir("standalone");
  for (const char* t : kTasks) {
    GramOptions go;
    go.max_examples = 256;  // the request's default
    ASSERT_TRUE(EstimateGrams(zoo_ + "/" + t + "/program.pt", zoo_ + "/" + t,
                              zoo_ + "/data/" + t + "_fisher.safetensors",
                              zoo_dir_ + "/stats_" + t, go)
                    .ok());
  }
  auto config = MergeConfig::FromYaml(
      Yaml("regmean", "alpha: 0.9, ridge: 0.001", "gram"), zoo_);
  ASSERT_TRUE(config.ok()) << config.status();
  MergeOptions mo;
  mo.output_dir = zoo_dir_ + "/out";
  ASSERT_TRUE(RunMerge(*config, mo).ok());
  EXPECT_EQ(testing::ReadModel(job.result_dir),
            testing::ReadModel(mo.output_dir));
}

TEST_F(DataAwareMergeTest, RiReportsInterferenceBeforeAndAfter) {
  JobRecord job = Run(Yaml("ri", "ri_method: ties, density: 0.5, steps: 40"));
  ASSERT_EQ(job.state, JobState::kSucceeded) << job.error_message;
  ASSERT_TRUE(job.metrics.count("ri.interference_before"));
  ASSERT_TRUE(job.metrics.count("ri.interference_after"));
  EXPECT_LT(job.metrics.at("ri.interference_after"),
            job.metrics.at("ri.interference_before"));
  // Persisted with the job.
  auto reloaded = jobs_->Get(kDefaultTenant, job.id);
  ASSERT_TRUE(reloaded.ok());
  EXPECT_EQ(reloaded->metrics, job.metrics);
}

TEST_F(DataAwareMergeTest, SweepReusesStatisticsAndPicksTheBestPoint) {
  SweepGrid grid = {{"lambda", {0.5, 1.0}}, {"weight@mod3", {1, 2}}};
  std::vector<SweepPoint> points;
  SweepOptions so;
  so.on_point = [&](const SweepPoint& p) {
    points.push_back(p);
    return absl::OkStatus();
  };
  auto s = RunSweep(*jobs_, testing::Request(Yaml("fisher", "examples: 32")),
                    grid, so);
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(points.size(), 4u);
  EXPECT_EQ(s->stats_misses, 4);
  EXPECT_EQ(s->stats_hits, 12);
  // The last axis varies fastest.
  EXPECT_EQ(points[1].values[0],
            (std::pair<std::string, double>{"lambda", 0.5}));
  EXPECT_EQ(points[1].values[1],
            (std::pair<std::string, double>{"weight@mod3", 2}));
  double best = 0;
  for (const SweepPoint& p : points) {
    ASSERT_EQ(p.tasks.size(), 4u);
    EXPECT_EQ(p.tasks[0].dataset, "parity_val");  // validation data
    best = std::max(best, p.mean_accuracy);
  }
  EXPECT_EQ(s->best.mean_accuracy, best);
  // Fisher ignores lambda: points differing only in lambda agree.
  EXPECT_EQ(points[0].mean_accuracy, points[2].mean_accuracy);
}

TEST_F(DataAwareMergeTest, MissingProgramsDataAndBadSettingsAreNamed) {
  CheckpointRecord bare;
  bare.name = "bare";
  bare.role = CheckpointRole::kExpert;
  bare.base = "base";
  // The zoo is the only root: copy the weights there, without the program.
  bare.path = zoo_ + "/bare";
  std::filesystem::create_directories(bare.path);
  std::filesystem::copy_file(zoo_ + "/parity/model.safetensors",
                             bare.path + "/model.safetensors");
  ASSERT_TRUE(registry_->Register(kDefaultTenant, bare).ok());
  auto j = jobs_->Submit(testing::Request(
      "merge_method: fisher\nbase_model: base\nmodels:\n  - model: parity\n"
      "  - model: bare\n"));
  EXPECT_EQ(j.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(j.status().message()),
              HasSubstr("expert 'bare' has no program"));
  j = jobs_->Submit(testing::Request(Yaml("fisher", "fisher_mode: fast")));
  EXPECT_EQ(j.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(j.status().message()), HasSubstr("'fast'"));
  j = jobs_->Submit(testing::Request(Yaml("ri", "ri_method: ri")));
  EXPECT_THAT(std::string(j.status().message()), HasSubstr("ri_method 'ri'"));
  // An unlabeled fisher split (the newest one wins) serves the exact Fisher
  // but not the empirical one.
  DatasetRecord unlabeled;
  unlabeled.name = "parity_fisher_unlabeled";
  unlabeled.task = "parity";
  unlabeled.role = DatasetRole::kFisher;
  unlabeled.path = zoo_ + "/data/parity_aux.safetensors";
  ASSERT_TRUE(registry_->RegisterDataset(kDefaultTenant, unlabeled).ok());
  j = jobs_->Submit(testing::Request(Yaml("fisher", "fisher_mode: empirical")));
  EXPECT_EQ(j.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(j.status().message()),
              HasSubstr("dataset 'parity_fisher_unlabeled' of task 'parity' "
                        "has none"));
  EXPECT_TRUE(
      jobs_->Submit(testing::Request(Yaml("fisher", "fisher_mode: exact")))
          .ok());
  // No auxiliary data for a task: RI names the task and the role.
  ASSERT_TRUE(registry_->DeleteDataset(kDefaultTenant, "mod3_aux").ok());
  j = jobs_->Submit(testing::Request(Yaml("ri", "ri_method: ties")));
  EXPECT_EQ(j.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(j.status().message()),
              HasSubstr("task 'mod3' of expert 'mod3' has no dataset with "
                        "role auxiliary"));
  // The dataset file registered from the zoo was not the registry's to
  // remove.
  EXPECT_TRUE(std::filesystem::exists(zoo_ + "/data/mod3_aux.safetensors"));
}

TEST_F(DataAwareMergeTest, DatasetAndProgramValidation) {
  DatasetRecord d;
  d.name = "unlabeled_eval";
  d.task = "parity";
  d.role = DatasetRole::kEval;
  d.path = zoo_ + "/data/parity_aux.safetensors";
  auto r = registry_->RegisterDataset(kDefaultTenant, d);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("no 'labels'"));
  d.path = "/etc/hostname";
  EXPECT_EQ(registry_->RegisterDataset(kDefaultTenant, d).status().code(),
            absl::StatusCode::kPermissionDenied);
  d.path = zoo_ + "/parity/model.safetensors";  // no `inputs`
  d.role = DatasetRole::kAuxiliary;
  r = registry_->RegisterDataset(kDefaultTenant, d);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("'inputs'"));
  d.path = zoo_ + "/data/parity_aux.safetensors";
  d.name = "parity_eval";
  EXPECT_EQ(registry_->RegisterDataset(kDefaultTenant, d).status().code(),
            absl::StatusCode::kAlreadyExists);

  CheckpointRecord c;
  c.name = "not_a_program";
  c.role = CheckpointRole::kExpert;
  c.path = zoo_ + "/parity";
  c.program = zoo_ + "/parity/model.safetensors";
  auto reg = registry_->Register(kDefaultTenant, c);
  EXPECT_EQ(reg.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(reg.status().message()),
              HasSubstr("not a TorchScript archive"));
  EXPECT_FALSE(registry_->Get(kDefaultTenant, "not_a_program", false).ok());
}

TEST_F(DataAwareMergeTest, OlderDatabasesGainTheNewColumns) {
  // A registry and job table as the first release wrote them.
  const std::string dir = testing::TempDir("old_db");
  {
    auto db = SqliteDatabase::Open(dir + "/mergeserve.db");
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE(
        (*db)
            ->Exec("CREATE TABLE checkpoints (name TEXT PRIMARY KEY, "
                   "role INTEGER NOT NULL, base TEXT NOT NULL DEFAULT '', "
                   "path TEXT NOT NULL, labels TEXT NOT NULL DEFAULT "
                   "'{}', content_digest TEXT NOT NULL, size_bytes "
                   "INTEGER NOT NULL, tensor_count INTEGER NOT NULL, "
                   "parameter_count INTEGER NOT NULL, create_time_ms "
                   "INTEGER NOT NULL, tensors TEXT NOT NULL)")
            .ok());
    ASSERT_TRUE((*db)
                    ->Exec("INSERT INTO checkpoints VALUES ('old', 1, '', "
                           "'/x', '{}', 'sha256:0', 1, 1, 1, 1, '[]')")
                    .ok());
  }
  CheckpointRegistry::Options ro;
  ro.data_dir = dir;
  auto r = CheckpointRegistry::Create(ro);
  ASSERT_TRUE(r.ok()) << r.status();
  auto old = (*r)->Get(kDefaultTenant, "old", false);
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(old->program, "");
  EXPECT_EQ(old->task, "");
}

TEST_F(DataAwareMergeTest, MergeTensorsRegexChoosesWhatIsMerged) {
  const std::string yaml =
      "merge_method: task_arithmetic\nbase_model: base\n"
      "parameters: {lambda: 0.5, merge_tensors: '^backbone\\.0\\.'}\n"
      "models:\n  - model: parity\n  - model: high\n";
  auto merged = testing::Merge(zoo_, yaml);
  ASSERT_TRUE(merged.ok()) << merged.status();
  const auto base = testing::ReadModel(zoo_ + "/base");
  EXPECT_NE(merged->at("backbone.0.weight"), base.at("backbone.0.weight"));
  EXPECT_EQ(merged->at("backbone.2.weight"), base.at("backbone.2.weight"));
  EXPECT_EQ(merged->at("backbone.2.bias"), base.at("backbone.2.bias"));
  // Evaluation follows the regex: the head expert keeps what was not merged.
  EvalTarget target;
  target.tenant = kDefaultTenant;
  target.weights_dir = zoo_ + "/out";
  target.preferred_heads = {"parity"};
  target.tasks = {"parity"};
  TaskEvaluator evaluator(registry_.get(), "cpu");
  auto everything = evaluator.Run(target);
  target.merged_regex = "^backbone\\.0\\.";
  auto only_merged = evaluator.Run(target);
  ASSERT_TRUE(everything.ok() && only_merged.ok());
  auto ev = ProgramEvaluator::Create(zoo_ + "/parity/program.pt");
  ASSERT_TRUE(ev.ok());
  ASSERT_TRUE((*ev)->LoadWeights(**ModelFolder::Open(zoo_ + "/parity")).ok());
  ASSERT_TRUE((*ev)
                  ->LoadWeights(**ModelFolder::Open(zoo_ + "/out"),
                                [](const std::string& n) {
                                  return n.rfind("backbone.0.", 0) == 0;
                                })
                  .ok());
  auto want = (*ev)->Evaluate(zoo_ + "/data/parity_eval.safetensors");
  ASSERT_TRUE(want.ok());
  EXPECT_EQ((*only_merged)[0].accuracy, want->accuracy);
  EXPECT_EQ((*only_merged)[0].mean_cross_entropy, want->mean_cross_entropy);
  EXPECT_NE((*everything)[0].mean_cross_entropy, want->mean_cross_entropy);

  auto bad = testing::Merge(
      zoo_,
      "merge_method: task_arithmetic\nbase_model: base\n"
      "parameters: {merge_tensors: '('}\nmodels:\n  - model: parity\n");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("merge_tensors"));
}

}  // namespace
}  // namespace mergeserve
