// consensus_ta / consensus_ties (consensus.cc): the TALL-mask rule computed
// here independently, the limits of consensus_k, the TIES multi-task vector
// (paper preset, disjoint sum), both backends, and the parameters the
// method refuses.
#include <cmath>
#include <random>

#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using testing::TempDir;
using Model = std::map<std::string, std::vector<float>>;

testing::TestModel Experts(const std::string& dir) {
  std::mt19937 rng(23);
  testing::TestModel base;
  base["model.layers.0.w"] = {{64, 32}, testing::RandomValues(64 * 32, rng)};
  base["model.layers.1.w"] = {{32, 16}, testing::RandomValues(32 * 16, rng)};
  base["model.norm.weight"] = {{32}, testing::RandomValues(32, rng)};
  testing::WriteExperts(dir, base, 3, rng, 0.05f);
  return base;
}

std::string Config(const std::string& method, const std::string& params) {
  return "merge_method: " + method +
         "\nbase_model: base\nmodels:\n"
         "  - model: e0\n    parameters: {tall_mask_lambda: 0.4}\n"
         "  - model: e1\n    parameters: {tall_mask_lambda: 0.5}\n"
         "  - model: e2\n"
         "parameters: {" +
         params + "}\n";
}

// consensus_ta from its definition, in fp32 and the authors' order.
TEST(ConsensusTest, TaskArithmeticMasksFollowTheTallRule) {
  const std::string dir = TempDir("consensus_rule");
  const auto base = Experts(dir);
  const auto experts = testing::ReadExperts(dir, 3);
  const float tall[] = {0.4f, 0.5f, 0.6f};
  for (int k : {1, 2, 3}) {
    auto out = testing::Merge(
        dir, Config("consensus_ta",
                    "lambda: 0.7, consensus_k: " + std::to_string(k)));
    ASSERT_TRUE(out.ok()) << out.status();
    int64_t kept = 0, total = 0;
    for (const auto& [name, t] : base) {
      for (size_t j = 0; j < t.values.size(); ++j) {
        const float b = t.values[j];
        float mtl = 0;
        for (const Model& e : experts) mtl += e.at(name)[j] - b;
        int votes = 0;
        for (int i = 0; i < 3; ++i) {
          const float x = experts[i].at(name)[j];
          votes += std::fabs(b - x) > tall[i] * std::fabs((b + mtl) - x);
        }
        const float want = b + 0.7f * (votes >= k ? mtl : 0.f);
        ASSERT_NEAR(out->at(name)[j], want, 1e-6f) << name << "[" << j << "]";
        kept += votes >= k;
        ++total;
      }
    }
    // On these inputs every entry matters to some task, and k >= 2 drops
    // some.
    EXPECT_GT(kept, 0) << k;
    if (k >= 2) {
      EXPECT_LT(kept, total) << k;
    }
  }
}

// k = 0 is plain task arithmetic / TIES (paper preset, disjoint sum, density
// 0.2); k > N gives the base.
TEST(ConsensusTest, KZeroIsTheMultiTaskVectorAndKAboveNIsTheBase) {
  const std::string dir = TempDir("consensus_k");
  const auto base = Experts(dir);
  auto ta0 = testing::Merge(
      dir, Config("consensus_ta", "lambda: 0.6, consensus_k: 0"));
  auto ta = testing::Merge(dir, Config("task_arithmetic", "lambda: 0.6"));
  ASSERT_TRUE(ta0.ok() && ta.ok()) << ta0.status() << ta.status();
  EXPECT_EQ(*ta0, *ta);
  auto ties0 = testing::Merge(
      dir, Config("consensus_ties", "lambda: 0.6, consensus_k: 0"));
  auto ties = testing::Merge(
      dir,
      Config("ties",
             "lambda: 0.6, semantics: paper, divisor: none, density: 0.2"));
  ASSERT_TRUE(ties0.ok() && ties.ok()) << ties0.status() << ties.status();
  EXPECT_EQ(*ties0, *ties);
  for (const char* method : {"consensus_ta", "consensus_ties"}) {
    auto all = testing::Merge(dir, Config(method, "consensus_k: 4"));
    ASSERT_TRUE(all.ok()) << all.status();
    for (const auto& [name, t] : base) EXPECT_EQ(all->at(name), t.values);
  }
}

TEST(ConsensusTest, BackendsAgree) {
  const std::string dir = TempDir("consensus_agree");
  Experts(dir);
  for (const char* method : {"consensus_ta", "consensus_ties"}) {
    auto both = testing::MergeOnBothBackends(
        dir, Config(method, "lambda: 0.9, consensus_k: 2"));
    ASSERT_TRUE(both.ok()) << both.status();
    for (const auto& [name, want] : both->second) {
      const auto& have = both->first.at(name);
      for (size_t j = 0; j < want.size(); ++j) {
        ASSERT_NEAR(have[j], want[j], 1e-6f) << method << " " << name;
      }
    }
  }
}

TEST(ConsensusTest, RefusesWeightsAndFractionalK) {
  const std::string dir = TempDir("consensus_bad");
  Experts(dir);
  auto weighted = testing::Merge(dir, Config("consensus_ta", "weight: 0.5"));
  ASSERT_FALSE(weighted.ok());
  EXPECT_EQ(weighted.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(weighted.status().message().find("weight"), std::string::npos);
  auto k = testing::Merge(dir, Config("consensus_ties", "consensus_k: 1.5"));
  ASSERT_FALSE(k.ok());
  EXPECT_NE(k.status().message().find("consensus_k"), std::string::npos);
}

}  // namespace
}  // namespace mergeserve
