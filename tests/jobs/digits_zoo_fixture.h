// A job manager over the digits zoo (tests/tools/make_zoo.py): a base, four
// experts with programs, each task's eval/validation/fisher/aux data.
#ifndef MERGESERVE_TESTS_JOBS_DIGITS_ZOO_FIXTURE_H_
#define MERGESERVE_TESTS_JOBS_DIGITS_ZOO_FIXTURE_H_

#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "gtest/gtest.h"
#include "jobs_test_util.h"
#include "mergeserve/jobs/job_manager.h"
#include "test_util.h"

namespace mergeserve {

inline const char* const kTasks[] = {"parity", "high", "mod3", "mirror"};

class DigitsZooTest : public ::testing::Test {
 protected:
  void SetUp() override {
    zoo_ = testing::DigitsZoo();
    CheckpointRegistry::Options ro;
    ro.data_dir = testing::TempDir("data");
    ro.allowed_roots = {zoo_};
    auto r = CheckpointRegistry::Create(ro);
    ASSERT_TRUE(r.ok()) << r.status();
    registry_ = std::move(*r);
    CheckpointRecord base;
    base.name = "base";
    base.role = CheckpointRole::kBase;
    base.path = zoo_ + "/base";
    ASSERT_TRUE(registry_->Register(kDefaultTenant, base).ok());
    for (const char* t : kTasks) {
      CheckpointRecord e;
      e.name = t;
      e.role = CheckpointRole::kExpert;
      e.base = "base";
      e.path = zoo_ + "/" + t;
      e.task = t;  // program.pt in the folder is attached
      auto reg = registry_->Register(kDefaultTenant, e);
      ASSERT_TRUE(reg.ok()) << reg.status();
      EXPECT_EQ(reg->program, zoo_ + "/" + t + "/program.pt");
      EXPECT_EQ(reg->program_digest.substr(0, 7), "sha256:");
      for (auto [split, role] : {std::pair{"eval", DatasetRole::kEval},
                                 std::pair{"val", DatasetRole::kValidation},
                                 std::pair{"fisher", DatasetRole::kFisher},
                                 std::pair{"aux", DatasetRole::kAuxiliary}}) {
        DatasetRecord d;
        d.name = std::string(t) + "_" + split;
        d.task = t;
        d.role = role;
        d.path = zoo_ + "/data/" + t + "_" + split + ".safetensors";
        auto dr = registry_->RegisterDataset(kDefaultTenant, d);
        ASSERT_TRUE(dr.ok()) << dr.status();
      }
    }
    JobManager::Options o;
    o.data_dir = registry_->data_dir();
    o.registry = registry_.get();
    auto jobs = JobManager::Create(o);
    ASSERT_TRUE(jobs.ok()) << jobs.status();
    jobs_ = std::move(*jobs);
  }

  JobRecord Run(const std::string& yaml) {
    auto j = jobs_->Submit(testing::Request(yaml));
    EXPECT_TRUE(j.ok()) << j.status();
    if (!j.ok()) return {};
    for (int i = 0; i < 6000; ++i) {
      auto now = jobs_->Get(kDefaultTenant, j->id);
      if (now.ok() && IsFinal(now->state)) return *now;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ADD_FAILURE() << "job did not finish";
    return {};
  }

  static std::string Yaml(const std::string& method, const std::string& params,
                          const std::string& per_model = "") {
    std::string y = "merge_method: " + method +
                    "\nbase_model: base\nparameters: {" + params +
                    "}\nmodels:\n";
    for (const char* t : kTasks) {
      y += std::string("  - model: ") + t + "\n";
      if (!per_model.empty()) {
        y += "    parameters: {" + per_model + ": " + zoo_dir_ + "/stats_" + t +
             "}\n";
      }
    }
    return y;
  }

  std::string zoo_;
  static inline std::string zoo_dir_;
  std::unique_ptr<CheckpointRegistry> registry_;
  std::unique_ptr<JobManager> jobs_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_TESTS_JOBS_DIGITS_ZOO_FIXTURE_H_
