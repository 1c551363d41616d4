#include "mergeserve/base/cpu_dispatch.h"

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace mergeserve {
namespace {

bool Has(const std::vector<KernelSet>& sets, KernelSet s) {
  return std::find(sets.begin(), sets.end(), s) != sets.end();
}

// Restores the CPU's own choice after each test: other tests in this binary
// run the widest kernels.
class CpuDispatchTest : public ::testing::Test {
 protected:
  void TearDown() override { LimitKernelsForTest(KernelSet::kAvx512); }
};

TEST_F(CpuDispatchTest, SetsAreWidestFirstAndEndWithThePortableLoops) {
  const std::vector<KernelSet> sets = SupportedKernelSets();
  ASSERT_FALSE(sets.empty());
  EXPECT_EQ(sets.back(), KernelSet::kPortable);
  for (size_t i = 1; i < sets.size(); ++i) {
    EXPECT_GT(static_cast<int>(sets[i - 1]), static_cast<int>(sets[i]));
  }
#if defined(__x86_64__) && !defined(MERGESERVE_NO_CPU_DISPATCH)
  EXPECT_EQ(Has(sets, KernelSet::kAvx2), __builtin_cpu_supports("avx2") != 0);
  EXPECT_EQ(Has(sets, KernelSet::kAvx512),
            __builtin_cpu_supports("avx512f") != 0);
#else
  EXPECT_EQ(sets.size(), 1u);
#endif
}

// Unlimited, the CPU decides; a test's limit turns the wider kernels off,
// and lifting it turns them back on.
TEST_F(CpuDispatchTest, LimitsTurnWiderKernelsOffAndBackOn) {
  const std::vector<KernelSet> sets = SupportedKernelSets();
  EXPECT_EQ(Avx2Kernels(), Has(sets, KernelSet::kAvx2));
  EXPECT_EQ(Avx512Kernels(), Has(sets, KernelSet::kAvx512));
  LimitKernelsForTest(KernelSet::kAvx2);
  EXPECT_EQ(Avx2Kernels(), Has(sets, KernelSet::kAvx2));
  EXPECT_FALSE(Avx512Kernels());
  LimitKernelsForTest(KernelSet::kPortable);
  EXPECT_FALSE(Avx2Kernels());
  EXPECT_FALSE(Avx512Kernels());
  LimitKernelsForTest(KernelSet::kAvx512);
  EXPECT_EQ(Avx2Kernels(), Has(sets, KernelSet::kAvx2));
  EXPECT_EQ(Avx512Kernels(), Has(sets, KernelSet::kAvx512));
}

TEST_F(CpuDispatchTest, EverySetHasItsOwnName) {
  std::set<std::string> names;
  for (KernelSet s :
       {KernelSet::kPortable, KernelSet::kAvx2, KernelSet::kAvx512}) {
    names.insert(KernelSetName(s));
  }
  EXPECT_EQ(names.size(), 3u);
  EXPECT_EQ(names.count("?"), 0u);
}

}  // namespace
}  // namespace mergeserve
