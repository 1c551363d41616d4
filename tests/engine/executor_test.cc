// The executor's hooks for the server.
#include "mergeserve/engine/executor.h"

#include <filesystem>
#include <map>
#include <random>

#include "gtest/gtest.h"
#include "mergeserve/engine/task_vector_cache.h"
#include "test_util.h"

namespace mergeserve {
namespace {

// The server's fencing hook: a merge whose hook refuses at the end commits
// nothing (no output folder, no temporary left), and one it allows commits.
TEST(BeforeCommitTest, ARefusedCommitLeavesNothingBehind) {
  const std::string dir = testing::TempDir("before-commit");
  testing::WriteModel(dir + "/base", {{"w", {{4}, {1, 2, 3, 4}}}});
  testing::WriteModel(dir + "/e0", {{"w", {{4}, {2, 2, 2, 2}}}});
  const std::string yaml =
      "merge_method: task_arithmetic\nbase_model: base\nmodels: [e0]\n";
  int calls = 0;
  MergeOptions refuse;
  refuse.before_commit = [&calls] {
    ++calls;
    return absl::AbortedError("lease lost");
  };
  auto out = testing::Merge(dir, yaml, refuse);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(calls, 1);
  EXPECT_FALSE(std::filesystem::exists(dir + "/out"));
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    EXPECT_EQ(e.path().filename().string().find("tmp"), std::string::npos)
        << e.path();
  }
  MergeOptions allow;
  allow.before_commit = [&calls] {
    ++calls;
    return absl::OkStatus();
  };
  auto ok = testing::Merge(dir, yaml, allow);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(ok->at("w"), (std::vector<float>{2, 2, 2, 2}));
}

// Every file of a folder, by name.
std::map<std::string, std::string> Files(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    out[e.path().filename().string()] =
        testing::ReadFileBytes(e.path().string());
  }
  return out;
}

// A merge that also writes other λ values or other weights (a sweep's row)
// writes into each variant's folder exactly what a merge with those numbers
// writes: every tensor's bytes, the saved config and the model card. Tensor
// c spans several chunks. In the second round of λ variants q comes from
// the cache, so both the merge pass and the cached update write them;
// weight variants merge q again per chunk and read no cached q.
TEST(MergeVariantsTest, EachVariantIsTheMergeWithItsNumbers) {
  const std::string dir = testing::TempDir("merge-variants");
  std::mt19937 rng(11);
  testing::TestModel base;
  base["a"] = {{120, 40}, testing::RandomValues(120 * 40, rng), DType::kBF16};
  base["b"] = {{40}, testing::RandomValues(40, rng), DType::kF32};
  base["c"] = {{200, 256}, testing::RandomValues(200 * 256, rng), DType::kBF16};
  testing::WriteExperts(dir, base, 3, rng, 0.05f);
  auto yaml = [](const std::string& method, const std::string& params,
                 double lambda, double w1) {
    return "merge_method: " + method +
           "\nbase_model: base\nmodels:\n"
           "  - model: e0\n    parameters: {density: 0.3, weight: 0.7}\n"
           "  - model: e1\n    parameters: {density: 0.5, weight: " +
           std::to_string(w1) +
           "}\n"
           "  - model: e2\n    parameters: {density: 0.4}\n"
           "parameters: {lambda: " +
           std::to_string(lambda) + (params.empty() ? "" : ", ") + params +
           "}\n";
  };
  struct Case {
    const char* method;
    const char* params;
  };
  // (λ, e1's weight) of the variants: λ alone, then weights alone (λ as
  // the merge's), then both.
  const std::vector<std::pair<double, double>> numbers = {
      {0.3, 1.0}, {-0.5, 1.0}, {1.0, 0.4}, {1.0, 1.9}, {0.6, 0.0}};
  for (const Case& c :
       {Case{"ties", ""}, Case{"ties", "trim_scope: model"},
        Case{"ties", "keep: threshold, consensus: count"},
        Case{"breadcrumbs_ties", "gamma: 0.05"}, Case{"dare_ties", "seed: 3"},
        Case{"della", "seed: 4"}, Case{"task_arithmetic", "normalize: true"},
        Case{"dare_linear", "seed: 5"}}) {
    SCOPED_TRACE(std::string(c.method) + " " + c.params);
    TaskVectorCache cache(1 << 24);
    for (int round = 0; round < 3; ++round) {
      // Rounds 0 and 1: λ variants (q cached in round 0, read in round 1);
      // round 2: every variant.
      const size_t first = 0, last = round < 2 ? 2 : numbers.size();
      auto config =
          MergeConfig::FromYaml(yaml(c.method, c.params, 1.0, 1.0), dir);
      ASSERT_TRUE(config.ok()) << config.status();
      MergeOptions o;
      o.output_dir = dir + "/fused";
      o.overwrite = true;
      o.threads = 2;
      o.cache = &cache;
      o.digest = [](const std::string& ref) { return "digest-of-" + ref; };
      for (size_t v = first; v < last; ++v) {
        const auto [lambda, w1] = numbers[v];
        auto vc =
            MergeConfig::FromYaml(yaml(c.method, c.params, lambda, w1), dir);
        ASSERT_TRUE(vc.ok());
        MergeOptions::Variant variant;
        variant.output_dir = dir + "/variant" + std::to_string(v);
        if (lambda != 1.0) variant.lambda = lambda;
        if (w1 != 1.0) variant.weights["e1"] = w1;
        variant.config_text = vc->ToYaml();
        o.variants.push_back(variant);
      }
      const CacheStats before = cache.stats();
      auto summary = RunMerge(*config, o);
      ASSERT_TRUE(summary.ok()) << summary.status();
      if (round == 1) {
        // Each q came from the cache: nothing was computed again.
        EXPECT_GE(cache.stats().hits, before.hits + 3);
        EXPECT_EQ(cache.stats().misses, before.misses);
      }
      for (size_t v = first; v < last; ++v) {
        const auto [lambda, w1] = numbers[v];
        auto alone =
            MergeConfig::FromYaml(yaml(c.method, c.params, lambda, w1), dir);
        MergeOptions a;
        a.output_dir = dir + "/alone";
        a.overwrite = true;
        ASSERT_TRUE(RunMerge(*alone, a).ok());
        const auto want = Files(dir + "/alone");
        const auto got = Files(dir + "/variant" + std::to_string(v));
        ASSERT_EQ(got.size(), want.size());
        for (const auto& [name, bytes] : want) {
          EXPECT_TRUE(got.at(name) == bytes)
              << name << " differs at lambda " << lambda << ", weight " << w1
              << ", round " << round;
        }
        // Not the merge's own result (else the comparison proves little).
        EXPECT_NE(Files(dir + "/fused").at("model.safetensors"),
                  want.at("model.safetensors"));
      }
    }
  }
}

TEST(MergeVariantsTest, MergesThatCannotWriteThemRefuseBeforeWriting) {
  const std::string dir = testing::TempDir("merge-variants-refused");
  testing::WriteModel(dir + "/base", {{"w", {{4}, {1, 2, 3, 4}}}});
  testing::WriteModel(dir + "/e0", {{"w", {{4}, {2, 2, 2, 2}}}});
  testing::WriteModel(dir + "/e1", {{"w", {{4}, {0, 3, 2, 5}}}});
  auto plan = [&](const std::string& yaml) {
    auto config = MergeConfig::FromYaml(yaml, dir);
    EXPECT_TRUE(config.ok()) << config.status();
    auto p = MergePlan::Create(*config, LocalPathResolver(dir));
    EXPECT_TRUE(p.ok()) << p.status();
    return std::move(*p);
  };
  const std::string ties =
      "merge_method: ties\nbase_model: base\nmodels: [e0, e1]\n";
  const std::string majority =
      "merge_method: ties\nbase_model: base\nmodels: [e0, e1]\n"
      "parameters: {zero_sign: majority}\n";
  const std::string linear = "merge_method: linear\nmodels: [e0, e1]\n";
  const std::string slerp =
      "merge_method: slerp\nbase_model: e0\nmodels: [e0, e1]\n"
      "parameters: {t: 0.5}\n";
  EXPECT_TRUE(CanWriteVariants(*plan(ties), Backend::kFused, false));
  EXPECT_TRUE(CanWriteVariants(*plan(ties), Backend::kFused, true));
  EXPECT_FALSE(CanWriteVariants(*plan(ties), Backend::kAten, false));
  // The tie-breaking census counts signs under the merge's own weights.
  EXPECT_TRUE(CanWriteVariants(*plan(majority), Backend::kFused, false));
  EXPECT_FALSE(CanWriteVariants(*plan(majority), Backend::kFused, true));
  EXPECT_FALSE(CanWriteVariants(*plan(linear), Backend::kFused, false));
  EXPECT_FALSE(CanWriteVariants(*plan(slerp), Backend::kFused, false));

  struct Case {
    std::string yaml;
    Backend backend;
    std::map<std::string, double> weights;
  };
  for (const Case& c :
       {Case{linear, Backend::kFused, {}}, Case{ties, Backend::kAten, {}},
        Case{majority, Backend::kFused, {{"e1", 0.5}}},
        Case{ties, Backend::kFused, {{"nobody", 0.5}}}}) {
    SCOPED_TRACE(c.yaml);
    auto config = MergeConfig::FromYaml(c.yaml, dir);
    ASSERT_TRUE(config.ok());
    MergeOptions o;
    o.output_dir = dir + "/out";
    o.backend = c.backend;
    MergeOptions::Variant v;
    v.output_dir = dir + "/v";
    v.lambda = 0.5;
    v.weights = c.weights;
    o.variants.push_back(v);
    auto summary = RunMerge(*config, o);
    EXPECT_EQ(summary.status().code(), absl::StatusCode::kInvalidArgument);
    if (c.yaml == ties && c.backend == Backend::kFused) {
      // Two variants into one folder, or one into the merge's own.
      for (const std::string& again : {dir + "/v", dir + "/out/"}) {
        MergeOptions twice = o;
        twice.variants[0].weights.clear();
        twice.variants.push_back(v);
        twice.variants.back().weights.clear();
        twice.variants.back().output_dir = again;
        auto refused = RunMerge(*config, twice);
        EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument)
            << again;
        EXPECT_NE(refused.status().message().find("written twice"),
                  std::string::npos)
            << refused.status();
      }
    }
    if (c.weights.count("nobody") != 0) {
      EXPECT_NE(summary.status().message().find("'nobody'"), std::string::npos)
          << summary.status();
    }
    EXPECT_FALSE(std::filesystem::exists(dir + "/out"));
    EXPECT_FALSE(std::filesystem::exists(dir + "/v"));
  }
}

}  // namespace
}  // namespace mergeserve
