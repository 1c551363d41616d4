// tsv, iso_c and iso_cts (matrix_merge.cc and one file each): the two
// backends (LAPACK and ATen) agree, the common rules hold (mean for
// non-matrices, `svd: false`, weights, λ), the methods' defining properties
// hold, bad parameters fail before any work, and a λ sweep factorises once.
#include <algorithm>
#include <cmath>
#include <random>

#include "engine/dense_matrix.h"
#include "gtest/gtest.h"
#include "mergeserve/engine/task_vector_cache.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using testing::TempDir;
using Model = std::map<std::string, std::vector<float>>;

const char kUp[] = "model.layers.0.mlp.up_proj.weight";      // 48x32, tall
const char kDown[] = "model.layers.0.mlp.down_proj.weight";  // 32x48, wide
const char kEmbed[] = "model.embed_tokens.weight";           // 40x16
const char kNorm[] = "model.norm.weight";                    // 1-D

// DIR/base and DIR/e0..e2; returns the base.
testing::TestModel Experts(const std::string& dir, int count = 3) {
  std::mt19937 rng(17);
  testing::TestModel base;
  base[kUp] = {{48, 32}, testing::RandomValues(48 * 32, rng, 0.5f)};
  base[kDown] = {{32, 48}, testing::RandomValues(32 * 48, rng, 0.5f)};
  base[kEmbed] = {{40, 16}, testing::RandomValues(40 * 16, rng, 0.5f)};
  base[kNorm] = {{32}, testing::RandomValues(32, rng, 0.5f)};
  testing::WriteExperts(dir, base, count, rng, 0.05f);
  return base;
}

std::string Config(const std::string& method, const std::string& params,
                   int count = 3, const char* model_params = "") {
  std::string y = "merge_method: " + method + "\nbase_model: base\nmodels:\n";
  for (int e = 0; e < count; ++e) {
    y += "  - model: e" + std::to_string(e) + "\n";
    if (*model_params != 0) {
      y += "    parameters: {weight: " + std::to_string(0.5 + 0.5 * e) + "}\n";
    }
  }
  return y + "parameters: {" + params + "}\n";
}

float MaxAbs(const std::vector<float>& v) {
  float m = 0;
  for (float x : v) m = std::max(m, std::fabs(x));
  return m;
}

// (out − base) / λ as a dense matrix.
DenseMatrix Update(const Model& out, const testing::TestModel& base,
                   const std::string& name, double lambda) {
  const auto& t = base.at(name);
  DenseMatrix m(t.shape[0], t.shape[1]);
  for (size_t j = 0; j < m.data.size(); ++j) {
    m.data[j] = (static_cast<double>(out.at(name)[j]) - t.values[j]) / lambda;
  }
  return m;
}

struct Case {
  const char* name;
  const char* method;
  const char* params;
  bool weighted;
};

class MatrixBackendTest : public ::testing::TestWithParam<Case> {};

// Both backends in fp64; the outputs differ at most in fp32 rounding.
TEST_P(MatrixBackendTest, LapackEqualsAten) {
  const Case& c = GetParam();
  const std::string dir = TempDir("matrix_agree");
  Experts(dir);
  auto both = testing::MergeOnBothBackends(
      dir, Config(c.method, c.params, 3, c.weighted ? "w" : ""));
  ASSERT_TRUE(both.ok()) << both.status();
  const auto& [fused, aten] = *both;
  ASSERT_EQ(fused.size(), 4u);
  for (const auto& [name, want] : aten) {
    const auto& have = fused.at(name);
    const float tol = 1e-6f * MaxAbs(want);
    for (size_t j = 0; j < want.size(); ++j) {
      ASSERT_NEAR(have[j], want[j], tol)
          << c.name << " " << name << "[" << j << "]";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Methods, MatrixBackendTest,
    ::testing::Values(Case{"tsv", "tsv", "lambda: 0.7", true},
                      Case{"tsv_reduced", "tsv", "sv_reduction: 0.2", false},
                      Case{"iso_c", "iso_c", "lambda: 1.5", true},
                      Case{"iso_cts", "iso_cts", "lambda: 1.2", false},
                      Case{"iso_cts_f06", "iso_cts",
                           "common_space_fraction: 0.6", true}),
    [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

// Every tensor that is not a matrix, and every matrix `svd` turns off, gets
// the mean (not the sum) of the weighted task vectors.
TEST(MatrixMethodsTest, NonMatricesAndSvdOffGetTheMeanTaskVector) {
  const std::string dir = TempDir("matrix_mean");
  const auto base = Experts(dir);
  const auto experts = testing::ReadExperts(dir, 3);
  for (const char* method : {"tsv", "iso_c", "iso_cts"}) {
    auto out = testing::Merge(
        dir, Config(method,
                    "lambda: 0.8, svd: [{filter: embed_tokens, value: false}, "
                    "{value: true}]",
                    3, "w"));
    ASSERT_TRUE(out.ok()) << method << ": " << out.status();
    for (const char* name : {kNorm, kEmbed}) {
      const auto& b = base.at(name).values;
      for (size_t j = 0; j < b.size(); ++j) {
        double mean = 0;
        for (int e = 0; e < 3; ++e) {
          mean += (0.5 + 0.5 * e) * (experts[e].at(name)[j] - b[j]);
        }
        mean /= 3;
        ASSERT_NEAR(out->at(name)[j], b[j] + 0.8 * mean, 1e-6)
            << method << " " << name << "[" << j << "]";
      }
    }
    // The matrices did get the SVD treatment: not the mean.
    const auto& b = base.at(kUp).values;
    double worst = 0;
    for (size_t j = 0; j < b.size(); ++j) {
      double mean = 0;
      for (int e = 0; e < 3; ++e) {
        mean += (0.5 + 0.5 * e) * (experts[e].at(kUp)[j] - b[j]);
      }
      worst =
          std::max(worst, std::fabs(out->at(kUp)[j] - (b[j] + 0.8 * mean / 3)));
    }
    EXPECT_GT(worst, 1e-3) << method;
  }
}

// One task, every singular triplet kept: polar factors of orthonormal
// factors are themselves, so TSV rebuilds λ·w·τ.
TEST(MatrixMethodsTest, TsvWithOneTaskAndFullRankRebuildsItsTaskVector) {
  const std::string dir = TempDir("tsv_one");
  const auto base = Experts(dir, 1);
  const Model e0 = testing::ReadModel(dir + "/e0");
  auto out = testing::Merge(
      dir, Config("tsv", "lambda: 0.5", 1, "w"));  // weight 0.5, k = r
  ASSERT_TRUE(out.ok()) << out.status();
  for (const char* name : {kUp, kDown, kEmbed}) {
    const auto& b = base.at(name).values;
    for (size_t j = 0; j < b.size(); ++j) {
      ASSERT_NEAR(out->at(name)[j], b[j] + 0.5 * 0.5 * (e0.at(name)[j] - b[j]),
                  1e-6)
          << name << "[" << j << "]";
    }
  }
}

// iso_c's update has a flat spectrum at the mean singular value of Σ τ_i;
// iso_cts's is flat too (σ̄·polar·polar).
TEST(MatrixMethodsTest, IsoUpdatesHaveAFlatSpectrum) {
  const std::string dir = TempDir("iso_flat");
  const auto base = Experts(dir);
  const auto experts = testing::ReadExperts(dir, 3);
  DenseMatrix sum(48, 32);
  for (const Model& e : experts) {
    for (size_t j = 0; j < sum.data.size(); ++j) {
      sum.data[j] += e.at(kUp)[j] - base.at(kUp).values[j];
    }
  }
  auto sum_svd = ComputeThinSvd(sum);
  ASSERT_TRUE(sum_svd.ok());
  double mean = 0;
  for (double s : sum_svd->s) mean += s;
  mean /= static_cast<double>(sum_svd->s.size());
  for (const char* method : {"iso_c", "iso_cts"}) {
    auto out = testing::Merge(dir, Config(method, "lambda: 2"));
    ASSERT_TRUE(out.ok()) << out.status();
    auto svd = ComputeThinSvd(Update(*out, base, kUp, 2));
    ASSERT_TRUE(svd.ok());
    const double top = svd->s.front(), bottom = svd->s.back();
    EXPECT_NEAR(bottom / top, 1.0, 1e-4) << method;
    // iso_c keeps ‖M‖_*/r; iso_cts averages other singular values.
    if (std::string(method) == "iso_c") {
      EXPECT_NEAR(top, mean, 1e-5 * mean);
    }
  }
}

// A frozen tensor (every expert equals the base) merges to the base, not NaN.
TEST(MatrixMethodsTest, FrozenMatrixGivesTheBase) {
  const std::string dir = TempDir("matrix_frozen");
  std::mt19937 rng(3);
  testing::TestModel base;
  base[kUp] = {{12, 8}, testing::RandomValues(96, rng)};
  testing::WriteModel(dir + "/base", base);
  for (int e = 0; e < 3; ++e) {
    testing::WriteModel(dir + "/e" + std::to_string(e), base);
  }
  for (const char* method : {"tsv", "iso_c", "iso_cts"}) {
    auto both = testing::MergeOnBothBackends(dir, Config(method, "lambda: 1"));
    ASSERT_TRUE(both.ok()) << method << ": " << both.status();
    EXPECT_EQ(both->first.at(kUp), base[kUp].values) << method;
    EXPECT_EQ(both->second.at(kUp), base[kUp].values) << method;
  }
}

// A rank-deficient sum (inputs that never change: dead pixels, dead units)
// leaves the null space's singular vectors free, and iso_c and the polar
// factors keep them. Both backends make torch.linalg.svd's LAPACK call on
// the same layout, so they still agree (they differed by 0.6 on the digits
// zoo before).
TEST(MatrixMethodsTest, BackendsAgreeOnRankDeficientTaskMatrices) {
  const std::string dir = TempDir("matrix_deficient");
  std::mt19937 rng(12);
  testing::TestModel base;
  base[kUp] = {{32, 32}, testing::RandomValues(32 * 32, rng)};
  testing::WriteModel(dir + "/base", base);
  for (int e = 0; e < 4; ++e) {
    testing::TestModel m = base;
    auto d = testing::RandomValues(32 * 32, rng, 0.05f);
    for (int64_t i = 0; i < 32; ++i) {
      for (int64_t j = 0; j < 32; ++j) {
        // Columns 0..9 and rows 30, 31 never change.
        if (j < 10 || i >= 30) continue;
        m[kUp].values[i * 32 + j] += d[i * 32 + j];
      }
    }
    testing::WriteModel(dir + "/e" + std::to_string(e), m);
  }
  for (const char* method : {"tsv", "iso_c", "iso_cts"}) {
    auto both =
        testing::MergeOnBothBackends(dir, Config(method, "lambda: 1", 4));
    ASSERT_TRUE(both.ok()) << method << ": " << both.status();
    const auto& want = both->second.at(kUp);
    const float tol = 1e-6f * MaxAbs(want);
    for (size_t j = 0; j < want.size(); ++j) {
      ASSERT_NEAR(both->first.at(kUp)[j], want[j], tol)
          << method << "[" << j << "]";
    }
  }
}

// Parameters that cannot work on some matrix fail before anything runs,
// naming the parameter and the tensor.
TEST(MatrixMethodsTest, ImpossibleRanksFailUpFrontNamingTheTensor) {
  const std::string dir = TempDir("matrix_bad");
  Experts(dir);
  auto tsv = testing::Merge(dir, Config("tsv", "sv_reduction: 0.5"));
  ASSERT_FALSE(tsv.ok());
  EXPECT_EQ(tsv.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(tsv.status().message().find("sv_reduction"), std::string::npos);
  EXPECT_NE(tsv.status().message().find("model."), std::string::npos);

  const std::string small = TempDir("iso_small");
  std::mt19937 rng(4);
  testing::TestModel base;
  base["w"] = {{3, 8}, testing::RandomValues(24, rng)};
  testing::WriteExperts(small, base, 2, rng, 0.1f);
  // r = 3, c = 0, (3 − 0)/2 rounds to 2 per task: c = 3 − 4 < 0.
  auto iso =
      testing::Merge(small, Config("iso_cts", "common_space_fraction: 0", 2));
  ASSERT_FALSE(iso.ok());
  EXPECT_EQ(iso.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(iso.status().message().find("'w'"), std::string::npos)
      << iso.status();
  auto range = testing::Merge(dir, Config("tsv", "sv_reduction: 1.5"));
  EXPECT_EQ(range.status().code(), absl::StatusCode::kInvalidArgument);
}

// Through a shared cache (the server's), a λ sweep factorises each matrix
// once and gives exactly the cold merges' bytes.
TEST(MatrixMethodsTest, LambdaSweepFactorisesOnce) {
  const std::string dir = TempDir("matrix_sweep");
  Experts(dir);
  for (const char* method : {"tsv", "iso_cts"}) {
    TaskVectorCache cache(64 << 20);
    MergeOptions cached;
    cached.cache = &cache;
    cached.digest = [](const std::string& ref) { return "digest-of-" + ref; };
    for (double lambda : {0.5, 1.0, 1.5}) {
      const std::string yaml =
          Config(method, "lambda: " + std::to_string(lambda), 3, "w");
      auto warm = testing::Merge(dir, yaml, cached);
      auto cold = testing::Merge(dir, yaml);
      ASSERT_TRUE(warm.ok() && cold.ok()) << warm.status();
      EXPECT_EQ(*warm, *cold) << method << " lambda " << lambda;
    }
    // Three matrices: three misses at the first point, hits afterwards.
    EXPECT_EQ(cache.stats().misses, 3) << method;
    EXPECT_EQ(cache.stats().hits, 6) << method;
  }
}

}  // namespace
}  // namespace mergeserve
