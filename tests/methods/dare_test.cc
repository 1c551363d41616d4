// DARE: unbiased in expectation with inverse rescaling, deterministic for a
// seed whatever the threads, chunking or backend.
#include <cmath>

#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using testing::TempDir;

constexpr int64_t kN = 200000;

std::string Family() {
  const std::string dir = TempDir("dare");
  testing::WriteModel(dir + "/base",
                      {{"w", {{kN}, std::vector<float>(kN, 0.f)}}});
  testing::WriteModel(dir + "/e0",
                      {{"w", {{kN}, std::vector<float>(kN, 1.f)}}});
  return dir;
}

std::string Config(const std::string& extra) {
  return "merge_method: dare_linear\nbase_model: base\nmodels:\n"
         "  - model: e0\n    parameters: {density: 0.3}\nparameters: {" +
         extra + "}\n";
}

TEST(DareTest, InverseRescaleIsUnbiased) {
  const std::string dir = Family();
  // The paper's and PEFT's default (mergekit's is L1 matching, below).
  auto out = testing::Merge(dir, Config("seed: 11, semantics: peft"));
  ASSERT_TRUE(out.ok()) << out.status();
  const auto& w = (*out)["w"];
  double sum = 0;
  int64_t kept = 0;
  for (float v : w) {
    sum += v;
    kept += v != 0;
    if (v != 0) {
      EXPECT_FLOAT_EQ(v, 1.f / 0.3f);
    }
  }
  const double p = 0.3;
  const double mean = sum / kN;
  // Var of one entry is (1-p)/p; the mean must be within 5 standard errors.
  const double se = std::sqrt((1 - p) / p / kN);
  EXPECT_NEAR(mean, 1.0, 5 * se);
  EXPECT_NEAR(static_cast<double>(kept) / kN, p,
              5 * std::sqrt(p * (1 - p) / kN));
}

TEST(DareTest, SameSeedIsBitIdenticalAcrossThreadsChunksAndBackends) {
  const std::string dir = Family();
  MergeOptions one;
  one.threads = 1;
  auto a = testing::Merge(dir, Config("seed: 5"), one);
  MergeOptions two;
  two.threads = 2;
  auto b = testing::Merge(dir, Config("seed: 5"), two);
  MergeOptions aten;
  aten.backend = Backend::kAten;
  auto c = testing::Merge(dir, Config("seed: 5"), aten);
  auto d = testing::Merge(dir, Config("seed: 6"), two);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok() && d.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_EQ(*a, *c);
  EXPECT_NE(*a, *d);
}

TEST(DareTest, L1RescaleMatchesNorms) {
  const std::string dir = Family();
  auto out = testing::Merge(dir, Config("seed: 3, rescale: true"));
  ASSERT_TRUE(out.ok()) << out.status();
  double sum = 0;
  for (float v : (*out)["w"]) sum += std::fabs(v);
  EXPECT_NEAR(sum, static_cast<double>(kN), kN * 1e-5);  // L1 norm preserved
  // It is the default under the mergekit preset (mergekit's `rescale`
  // defaults to true for DARE and DELLA); `rescale: false` turns it off.
  auto by_default = testing::Merge(dir, Config("seed: 3"));
  ASSERT_TRUE(by_default.ok());
  EXPECT_EQ((*by_default)["w"], (*out)["w"]);
  auto off = testing::Merge(dir, Config("seed: 3, rescale: false"));
  ASSERT_TRUE(off.ok());
  for (float v : (*off)["w"]) EXPECT_TRUE(v == 0.f || v == 1.f);
}

}  // namespace
}  // namespace mergeserve
