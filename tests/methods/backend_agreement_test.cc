// The fused CPU kernels and the ATen path (which also runs on CUDA) are two
// implementations of the same math; they must agree on every method and
// option, including bf16 inputs where boundary ties are everywhere.
#include <cmath>
#include <random>

#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using testing::TempDir;

struct Case {
  const char* name;
  const char* method;
  const char* params;  // global parameters
};

class BackendAgreementTest : public ::testing::TestWithParam<Case> {};

std::string Family(DType dtype) {
  const std::string dir = TempDir("agree");
  std::mt19937 rng(42);
  testing::TestModel base;
  const std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = {
      {"model.embed_tokens.weight", {300, 64}},
      {"model.layers.0.mlp.up_proj.weight", {96, 64}},
      {"model.layers.1.mlp.up_proj.weight", {96, 64}},
      {"model.norm.weight", {64}}};
  for (const auto& [name, shape] : shapes) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    auto v = testing::RandomValues(static_cast<size_t>(n), rng, 0.5f);
    if (name == "model.norm.weight") std::fill(v.begin(), v.end(), 1.f);
    base[name] = {shape, v, dtype};
  }
  testing::WriteModel(dir + "/base", base);
  for (int e = 0; e < 3; ++e) {
    testing::TestModel m = base;
    for (auto& [name, t] : m) {
      auto d = testing::RandomValues(t.values.size(), rng, 0.02f);
      for (size_t j = 0; j < d.size(); ++j) t.values[j] += d[j];
      // Some exact zeros and repeated magnitudes.
      for (size_t j = 0; j < d.size(); j += 7)
        t.values[j] = base[name].values[j];
    }
    testing::WriteModel(dir + "/e" + std::to_string(e), m);
  }
  return dir;
}

TEST_P(BackendAgreementTest, FusedEqualsAten) {
  const Case& c = GetParam();
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const std::string dir = Family(dtype);
    // Model-scope trims need one density per model; others get a gradient.
    const std::string p = c.params;
    const bool model_scope =
        p.find("trim_scope: model") != std::string::npos ||
        (p.find("paper") != std::string::npos &&
         p.find("trim_scope: tensor") == std::string::npos);
    const std::string d1 = model_scope ? "0.4" : "[0.2, 0.6]";
    const std::string yaml =
        std::string("merge_method: ") + c.method +
        "\nbase_model: base\nmodels:\n"
        "  - model: e0\n    parameters: {weight: 1.0, density: 0.3}\n"
        "  - model: e1\n    parameters: {weight: 0.5, density: " +
        d1 +
        "}\n"
        "  - model: e2\n    parameters: {weight: 2.0, density: 0.5}\n"
        "parameters: {" +
        c.params + "}\n";
    auto both = testing::MergeOnBothBackends(dir, yaml);
    ASSERT_TRUE(both.ok()) << both.status();
    for (const auto& [name, va] : both->first) {
      const auto& vb = both->second.at(name);
      ASSERT_EQ(va.size(), vb.size());
      size_t diff = 0;
      for (size_t j = 0; j < va.size(); ++j) {
        // bf16 outputs: equal or one bf16 ulp apart (l1 norms are summed in
        // a different order); f32: fp rounding only.
        const float tol = dtype == DType::kBF16
                              ? std::fabs(va[j]) * 0x1p-7f
                              : 1e-6f * (1 + std::fabs(va[j]));
        if (std::fabs(va[j] - vb[j]) > tol) ++diff;
      }
      EXPECT_EQ(diff, 0u) << c.name << " " << name << " dtype "
                          << DTypeName(dtype);
    }
  }
}

// DELLA streams whole rows per chunk on the fused path; with 1/p or no
// rescaling it is the ATen path's float math element for element, including
// rows longer than a chunk (16384 elements) and 1-D tensors (one row).
TEST(DellaStreamingTest, FusedEqualsAtenBitwiseAcrossRowShapes) {
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    const std::string dir = TempDir("della_rows");
    std::mt19937 rng(11);
    testing::TestModel base;
    const std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = {
        {"long_rows", {3, 20000}}, {"short_rows", {50, 33}},
        {"vector", {70}},          {"one_col", {40, 1}},
        {"narrow", {4, 3000}},     {"odd_buckets", {4, 3000}}};
    for (const auto& [name, shape] : shapes) {
      const int64_t n = shape.size() == 2 ? shape[0] * shape[1] : shape[0];
      base[name] = {shape,
                    testing::RandomValues(static_cast<size_t>(n), rng, 0.5f),
                    dtype};
      if (name == "narrow" || name == "odd_buckets") {
        std::fill(base[name].values.begin(), base[name].values.end(), 0.f);
      }
    }
    testing::WriteModel(dir + "/base", base);
    const auto stored = testing::ReadModel(dir + "/base");  // bf16-rounded
    for (int e = 0; e < 2; ++e) {
      testing::TestModel m = base;
      for (auto& [name, t] : m) {
        auto d = testing::RandomValues(t.values.size(), rng, 0.02f);
        // Repeated magnitudes: ties rank by index.
        for (size_t j = 0; j < d.size(); ++j) {
          t.values[j] += j % 5 == 0 ? 0.01f : d[j];
          // Magnitudes that share their top 16 bits (f32): the ranking's
          // general sort rather than its bucket pass.
          if (name == "narrow") t.values[j] = 0.01f + 1e-6f * d[j];
          // Mostly magnitudes with zero low 16 bits (counted in place);
          // with low bits set and ties, sorted within their top-16 bucket:
          // a tenth in one (300 members per row: a general sort) and 30 per
          // row in another (insertion), in f32.
          if (name == "odd_buckets") {
            const float step = static_cast<float>((j / 10) % 37);
            t.values[j] = j % 10 == 0    ? 0.01f + 1e-9f * step
                          : j % 100 == 5 ? 0.03f + 2e-9f * (j / 100 % 3)
                                         : std::round(d[j] * 1024.f) / 1024.f;
          }
        }
      }
      testing::WriteModel(dir + "/e" + std::to_string(e), m);
    }
    for (const char* rescale : {"inverse", "none"}) {
      const std::string yaml =
          std::string(
              "merge_method: della\nbase_model: base\nmodels:\n"
              "  - model: e0\n    parameters: {weight: 1.0, density: 0.3}\n"
              "  - model: e1\n    parameters: {weight: 0.7, density: 0.6}\n"
              "parameters: {seed: 9, epsilon: 0.2, rescale_mode: ") +
          rescale + "}\n";
      auto both = testing::MergeOnBothBackends(dir, yaml);
      ASSERT_TRUE(both.ok()) << both.status();
      for (const auto& [name, fused] : both->first) {
        const auto& aten = both->second.at(name);
        ASSERT_EQ(fused.size(), aten.size());
        size_t diff = 0, zeros = 0;
        for (size_t j = 0; j < fused.size(); ++j) {
          diff += fused[j] != aten[j];
          zeros += fused[j] == stored.at(name)[j];
        }
        EXPECT_EQ(diff, 0u)
            << name << " " << rescale << " " << DTypeName(dtype);
        // Something was dropped and something kept.
        if (fused.size() > 1) {
          EXPECT_GT(zeros, 0u) << name;
          EXPECT_LT(zeros, fused.size()) << name;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Methods, BackendAgreementTest,
    ::testing::Values(
        Case{"ta", "task_arithmetic", "lambda: 0.8"},
        Case{"ta_normalized", "task_arithmetic", "normalize: true"},
        Case{"linear", "linear", ""}, Case{"ties_mergekit", "ties", ""},
        Case{"ties_sum", "ties", "normalize: false, lambda: 1.3"},
        Case{"ties_peft", "ties", "semantics: peft"},
        Case{"ties_paper_tensor", "ties",
             "semantics: paper, trim_scope: tensor"},
        Case{"ties_paper_model", "ties", "semantics: paper"},
        Case{"ties_model_exact", "ties", "trim_scope: model, keep: exact"},
        Case{"ties_threshold", "ties", "keep: threshold"},
        Case{"ties_count", "ties", "consensus: count, zero_sign: majority"},
        Case{"dare_linear", "dare_linear", "seed: 3"},
        Case{"dare_ties_l1", "dare_ties", "seed: 4, rescale: true"},
        Case{"breadcrumbs", "breadcrumbs", "gamma: 0.05"},
        Case{"breadcrumbs_ties", "breadcrumbs_ties", "gamma: 0.05"},
        Case{"della", "della", "seed: 5"},
        Case{"della_linear_inverse", "della_linear",
             "seed: 6, rescale_mode: inverse, epsilon: 0.1"},
        Case{"della_paper", "della", "semantics: paper, seed: 7"},
        Case{"model_stock", "model_stock", ""},
        Case{"model_stock_rows", "model_stock", "filter_wise: true"}),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

}  // namespace
}  // namespace mergeserve
