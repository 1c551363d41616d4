// SelectModelTrim: one expert's whole-model top-k, split into per-tensor keep
// sets; exact keep's boundary ties run out in one tensor, whose merge pass
// counts them.
#include "methods/model_trim.h"

#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "mergeserve/base/thread_pool.h"
#include "mergeserve/engine/merge_config.h"
#include "mergeserve/engine/task_vector_cache.h"
#include "test_util.h"

namespace mergeserve {
namespace {

// Three tensors t0..t2 of 5000 (5 chunks of 1024): |τ| is 1 where i % 3 == 0
// (1667 per tensor) and 0.5 elsewhere (3333 per tensor).
class ModelTrimTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempDir("model_trim");
    testing::TestModel base, expert;
    for (int t = 0; t < 3; ++t) {
      std::vector<float> tau(5000);
      for (size_t i = 0; i < tau.size(); ++i) {
        tau[i] = i % 3 == 0 ? 1.f : (i % 2 ? -0.5f : 0.5f);
      }
      const std::string name = "t" + std::to_string(t);
      base[name] = {{5000}, std::vector<float>(5000, 0.f)};
      expert[name] = {{5000}, tau};
    }
    testing::WriteModel(dir_ + "/base", base);
    testing::WriteModel(dir_ + "/e0", expert);
    // e1: distinct |τ| = 1 + (g+1)·2^-22 over the flat index g, whose low
    // 16 bits are set: its k-th is found by the selection's second pass.
    testing::TestModel distinct;
    for (int t = 0; t < 3; ++t) {
      std::vector<float> tau(5000);
      for (size_t i = 0; i < tau.size(); ++i) {
        tau[i] = 1.f + static_cast<float>(t * 5000 + i + 1) * 0x1.0p-22f;
      }
      distinct["t" + std::to_string(t)] = {{5000}, tau};
    }
    testing::WriteModel(dir_ + "/e1", distinct);
  }

  // The sets for density d (of each of `experts`); `cache` and its digests
  // when set.
  absl::StatusOr<ModelTrimSets> Select(
      double d, KeepMode keep, TaskVectorCache* cache = nullptr,
      const std::vector<std::string>& models = {"e0"}) {
    std::string yaml = "merge_method: ties\nbase_model: base\nmodels:\n";
    for (const std::string& m : models) {
      yaml += "  - model: " + m +
              "\n    parameters: {density: " + std::to_string(d) + "}\n";
    }
    auto config = MergeConfig::FromYaml(yaml, dir_);
    if (!config.ok()) return config.status();
    auto plan = MergePlan::Create(*config, LocalPathResolver(dir_));
    if (!plan.ok()) return plan.status();
    plan_ = std::move(*plan);
    ExecContext ctx;
    ctx.pool = &pool_;
    ctx.chunk_elems = 1024;
    std::vector<int> experts;
    for (size_t i = 0; i < plan_->models().size(); ++i) {
      ctx.model_digests.push_back("digest" + std::to_string(i));
      if (!plan_->models()[i].is_base) experts.push_back(static_cast<int>(i));
    }
    if (cache != nullptr) {
      ctx.cache = cache;
      ctx.base_digest = "base";
    }
    TaskVectorOptions opts;
    opts.sparsify = Sparsify::kMagnitude;
    opts.scope = TrimScope::kModel;
    opts.keep = keep;
    return SelectModelTrim(*plan_, ctx, opts, 1, experts);
  }

  std::string dir_;
  ThreadPool pool_{2};
  std::unique_ptr<MergePlan> plan_;
};

TEST_F(ModelTrimTest, ExactKeepCountsTiesOnlyInTheTensorWhereTheyRunOut) {
  struct Case {
    double density;
    float value;
    int tie_tensor;
    int64_t tensor_ties;
  };
  // keep = floor(d · 15000): 1500 and 3000 and 4500 of the 5001 ones, or
  // all ones and 999 of the halves.
  for (const Case& c : {Case{0.1, 1.f, 0, 1500}, Case{0.2, 1.f, 1, 1333},
                        Case{0.3, 1.f, 2, 1166}, Case{0.4, 0.5f, 0, 999}}) {
    auto sets = Select(c.density, KeepMode::kExact);
    ASSERT_TRUE(sets.ok()) << sets.status();
    ASSERT_EQ(sets->size(), 3u);
    for (int t = 0; t < 3; ++t) {
      const std::vector<TopSet>& per = sets->at("t" + std::to_string(t));
      ASSERT_EQ(per.size(), 1u);
      const TopSet& s = per[0];
      SCOPED_TRACE("density " + std::to_string(c.density) + ", tensor t" +
                   std::to_string(t));
      EXPECT_EQ(s.kind, TopSet::kThreshold);
      EXPECT_EQ(s.value, c.value);
      if (t < c.tie_tensor) {
        EXPECT_TRUE(s.all_ties);  // before: every tie kept
      } else if (t == c.tie_tensor) {
        EXPECT_FALSE(s.all_ties);
        EXPECT_TRUE(s.ties_in_pass);  // the merge pass counts them
        EXPECT_EQ(s.tensor_ties, c.tensor_ties);
        EXPECT_TRUE(s.chunk_ties.empty());
      } else {
        EXPECT_FALSE(s.all_ties);  // after: none
        EXPECT_FALSE(s.ties_in_pass);
        EXPECT_EQ(s.tensor_ties, 0);
        EXPECT_EQ(s.chunk_ties, std::vector<int64_t>(5, 0));
      }
    }
  }
}

// One expert's ties are left to its merge pass (resolved by pass 1) while
// the other's k-th needs the selection's second pass over every tensor:
// each gets its own sets.
TEST_F(ModelTrimTest, AnExpertCountedInPassBesideOneThatNeedsThePass2) {
  auto sets = Select(0.2, KeepMode::kExact, nullptr, {"e0", "e1"});
  ASSERT_TRUE(sets.ok()) << sets.status();
  // e1 keeps its 3000 largest: down to g + 1 = 12001.
  const float v1 = 1.f + 12001.f * 0x1.0p-22f;
  for (int t = 0; t < 3; ++t) {
    const std::vector<TopSet>& per = sets->at("t" + std::to_string(t));
    ASSERT_EQ(per.size(), 2u);
    SCOPED_TRACE("tensor t" + std::to_string(t));
    EXPECT_EQ(per[0].value, 1.f);
    EXPECT_EQ(per[0].all_ties, t == 0);
    EXPECT_EQ(per[0].ties_in_pass, t == 1);
    if (t == 1) {
      EXPECT_EQ(per[0].tensor_ties, 1333);
    }
    if (t == 2) {
      EXPECT_EQ(per[0].chunk_ties, std::vector<int64_t>(5, 0));
    }
    EXPECT_EQ(per[1].kind, TopSet::kThreshold);
    EXPECT_EQ(per[1].value, v1);
    EXPECT_TRUE(per[1].all_ties);  // one entry equals it
    EXPECT_FALSE(per[1].ties_in_pass);
  }
}

TEST_F(ModelTrimTest, ThresholdKeepKeepsEveryTie) {
  auto sets = Select(0.2, KeepMode::kThreshold);
  ASSERT_TRUE(sets.ok()) << sets.status();
  for (const auto& [name, per] : *sets) {
    EXPECT_EQ(per[0].value, 1.f) << name;
    EXPECT_TRUE(per[0].all_ties) << name;
  }
}

TEST_F(ModelTrimTest, DensityOneKeepsAllAndZeroNone) {
  for (double d : {0.0, 1.0}) {
    auto sets = Select(d, KeepMode::kExact);
    ASSERT_TRUE(sets.ok()) << sets.status();
    for (const auto& [name, per] : *sets) {
      EXPECT_EQ(per[0].kind, d == 0 ? TopSet::kNone : TopSet::kAll) << name;
    }
  }
}

// The server's cache keeps each expert's sets: the same trim again is a hit
// and gives the same sets.
TEST_F(ModelTrimTest, CachedSetsAreTheSame) {
  TaskVectorCache cache(int64_t{1} << 20);
  auto first = Select(0.2, KeepMode::kExact, &cache);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(cache.stats().hits, 0);
  auto again = Select(0.2, KeepMode::kExact, &cache);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(cache.stats().hits, 1);
  for (const auto& [name, per] : *first) {
    const TopSet& a = per[0];
    const TopSet& b = again->at(name)[0];
    EXPECT_EQ(a.value, b.value) << name;
    EXPECT_EQ(a.all_ties, b.all_ties) << name;
    EXPECT_EQ(a.ties_in_pass, b.ties_in_pass) << name;
    EXPECT_EQ(a.tensor_ties, b.tensor_ties) << name;
    EXPECT_EQ(a.chunk_ties, b.chunk_ties) << name;
  }
}

}  // namespace
}  // namespace mergeserve
