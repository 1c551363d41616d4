#include "mergeserve/base/cpu_dispatch.h"

#include <atomic>

namespace mergeserve {
namespace {

std::atomic<int> widest_for_test{static_cast<int>(KernelSet::kAvx512)};

bool Allowed(KernelSet set) {
  return static_cast<int>(set) <=
         widest_for_test.load(std::memory_order_relaxed);
}

}  // namespace

bool Avx512Kernels() {
#if defined(__x86_64__) && !defined(MERGESERVE_NO_CPU_DISPATCH)
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512 && Allowed(KernelSet::kAvx512);
#else
  return false;
#endif
}

bool Avx2Kernels() {
#if defined(__x86_64__) && !defined(MERGESERVE_NO_CPU_DISPATCH)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  return avx2 && Allowed(KernelSet::kAvx2);
#else
  return false;
#endif
}

std::vector<KernelSet> SupportedKernelSets() {
  std::vector<KernelSet> sets;
#if defined(__x86_64__) && !defined(MERGESERVE_NO_CPU_DISPATCH)
  if (__builtin_cpu_supports("avx512f")) sets.push_back(KernelSet::kAvx512);
  if (__builtin_cpu_supports("avx2")) sets.push_back(KernelSet::kAvx2);
#endif
  sets.push_back(KernelSet::kPortable);
  return sets;
}

void LimitKernelsForTest(KernelSet widest) {
  widest_for_test.store(static_cast<int>(widest), std::memory_order_relaxed);
}

const char* KernelSetName(KernelSet set) {
  switch (set) {
    case KernelSet::kPortable:
      return "portable loops";
    case KernelSet::kAvx2:
      return "AVX2 kernels";
    case KernelSet::kAvx512:
      return "AVX-512 kernels";
  }
  return "?";
}

}  // namespace mergeserve
