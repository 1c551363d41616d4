// JobManager without gRPC: the shared memory budget limits how many merges
// run at once.
#include "mergeserve/jobs/job_manager.h"

#include <atomic>
#include <filesystem>
#include <map>
#include <random>
#include <thread>

#include "gtest/gtest.h"
#include "jobs_test_util.h"
#include "mergeserve/base/sha256.h"
#include "mergeserve/engine/executor.h"
#include "test_util.h"

namespace mergeserve {
namespace {

class JobManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = testing::TempDir("jobs");
    std::mt19937 rng(5);
    testing::TestModel base;
    // Large enough that a merge outlasts the next one's start on a loaded
    // machine (MaxConcurrent needs two to overlap).
    for (int l = 0; l < 8; ++l) {
      base["model.layers." + std::to_string(l) + ".w"] = {
          {2048, 512}, testing::RandomValues(2048 * 512, rng), DType::kBF16};
    }
    testing::WriteModel(root_ + "/models/base", base);
    testing::WriteModel(root_ + "/models/e0", base);
    CheckpointRegistry::Options ro;
    ro.data_dir = root_ + "/data";
    ro.allowed_roots = {root_ + "/models"};
    auto r = CheckpointRegistry::Create(ro);
    ASSERT_TRUE(r.ok()) << r.status();
    registry_ = std::move(*r);
    CheckpointRecord base_rec;
    base_rec.name = "base";
    base_rec.role = CheckpointRole::kBase;
    base_rec.path = root_ + "/models/base";
    ASSERT_TRUE(registry_->Register(kDefaultTenant, base_rec).ok());
    CheckpointRecord e0 = base_rec;
    e0.name = "e0";
    e0.role = CheckpointRole::kExpert;
    e0.base = "base";
    e0.path = root_ + "/models/e0";
    ASSERT_TRUE(registry_->Register(kDefaultTenant, e0).ok());
  }

  // Polls until the job ends (30 s at most).
  static JobRecord WaitForEnd(JobManager& jobs, const std::string& id) {
    JobRecord r;
    for (int i = 0; i < 3000; ++i) {
      r = *jobs.Get(kDefaultTenant, id);
      if (IsFinal(r.state)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return r;
  }
  // Runs 4 distinct merges with 2 workers; returns the most that ran at once.
  int MaxConcurrent(int64_t budget, const std::string& lambda) {
    JobManager::Options o;
    o.data_dir = registry_->data_dir();
    o.registry = registry_.get();
    o.workers = 2;
    o.threads_per_job = 1;
    o.memory_budget = budget;
    auto jobs = JobManager::Create(o);
    EXPECT_TRUE(jobs.ok()) << jobs.status();
    std::atomic<int> running{0}, most{0}, done{0};
    std::vector<std::string> ids;
    for (int i = 0; i < 4; ++i) {
      auto j = (*jobs)->Submit(testing::Request(
          "merge_method: ties\nbase_model: base\nmodels:\n  - model: e0\n"
          "    parameters: {density: 0." +
          std::to_string(i + 1) +
          "}\n"
          "parameters: {lambda: " +
          lambda + "}\n"));
      EXPECT_TRUE(j.ok()) << j.status();
      ids.push_back(j->id);
    }
    std::mutex mu;
    std::map<std::string, JobState> last;
    std::vector<uint64_t> subs;
    for (const std::string& id : ids) {
      auto sub =
          (*jobs)->Subscribe(kDefaultTenant, id, [&, id](const JobRecord& r) {
            std::lock_guard<std::mutex> lock(mu);
            const JobState before =
                last.count(id) ? last[id] : JobState::kQueued;
            last[id] = r.state;
            if (before != JobState::kRunning && r.state == JobState::kRunning) {
              most = std::max(most.load(), ++running);
            } else if (before == JobState::kRunning && IsFinal(r.state)) {
              --running;
              ++done;
            } else if (before == JobState::kQueued && IsFinal(r.state)) {
              ++done;
            }
          });
      EXPECT_TRUE(sub.ok());
      subs.push_back(*sub);
    }
    for (int i = 0; i < 2000 && done < 4; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(done, 4);
    for (uint64_t s : subs) (*jobs)->Unsubscribe(s);
    return most;
  }

  std::string root_;
  std::unique_ptr<CheckpointRegistry> registry_;
};

TEST_F(JobManagerTest, MemoryBudgetLimitsConcurrentMerges) {
  // The budget of one merge lets only one run at a time; without a budget,
  // both workers run.
  auto config = MergeConfig::FromYaml(
      "merge_method: ties\nbase_model: base\nmodels: [e0]\n", root_);
  ASSERT_TRUE(config.ok());
  auto plan = MergePlan::Create(*config, registry_->Resolver(kDefaultTenant));
  ASSERT_TRUE(plan.ok());
  const int64_t one = EstimateMergeMemory(**plan, Backend::kFused, 1);
  EXPECT_EQ(MaxConcurrent(one, "0.9"), 1);
  EXPECT_EQ(MaxConcurrent(0, "0.8"), 2);
}

TEST_F(JobManagerTest, FinishedJobsExpireWithTheirResultsAndDeleteNeedsAnEnd) {
  JobManager::Options o;
  o.data_dir = registry_->data_dir();
  o.registry = registry_.get();
  o.retention_ms = 50;
  auto jobs = JobManager::Create(o);
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  auto j = (*jobs)->Submit(testing::Request(
      "merge_method: task_arithmetic\nbase_model: base\nmodels: [e0]\n"));
  ASSERT_TRUE(j.ok()) << j.status();
  const JobRecord r = WaitForEnd(**jobs, j->id);
  ASSERT_EQ(r.state, JobState::kSucceeded) << r.error_message;
  ASSERT_TRUE(std::filesystem::is_directory(r.result_dir));
  // Another tenant can neither see nor delete it.
  EXPECT_EQ((*jobs)->Delete("other", j->id).code(),
            absl::StatusCode::kNotFound);
  // Past the retention period it goes (by this call, or by the janitor
  // thread if it came first).
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_LE((*jobs)->ExpireOldJobs(), 1);
  EXPECT_EQ((*jobs)->Get(kDefaultTenant, j->id).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_FALSE(std::filesystem::exists(r.result_dir));
}

TEST_F(JobManagerTest, RecordsTheDigestOfEveryResultFile) {
  // The digests come from the writer, hashed while the merge ran (a result
  // is never read back for them); they must be those of the files.
  JobManager::Options o;
  o.data_dir = registry_->data_dir();
  o.registry = registry_.get();
  auto jobs = JobManager::Create(o);
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  auto j = (*jobs)->Submit(
      testing::Request("merge_method: ties\nbase_model: base\nmodels: [e0]\n"
                       "parameters: {density: 0.3}\n"));
  ASSERT_TRUE(j.ok()) << j.status();
  const JobRecord r = WaitForEnd(**jobs, j->id);
  ASSERT_EQ(r.state, JobState::kSucceeded) << r.error_message;
  std::map<std::string, std::string> on_disk;
  for (const auto& e : std::filesystem::directory_iterator(r.result_dir)) {
    auto h = Sha256File(e.path().string());
    ASSERT_TRUE(h.ok()) << h.status();
    on_disk[e.path().filename().string()] = *h;
  }
  std::map<std::string, std::string> recorded;
  for (const ResultFileInfo& f : r.files) recorded[f.name] = f.sha256;
  EXPECT_EQ(recorded, on_disk);
  EXPECT_TRUE(on_disk.count("model.safetensors"));
}

}  // namespace
}  // namespace mergeserve
