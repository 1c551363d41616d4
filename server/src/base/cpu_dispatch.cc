#include "mergeserve/base/cpu_dispatch.h"

#include <atomic>

namespace mergeserve {
namespace {

std::atomic<bool> portable_for_test{false};

}  // namespace

bool Avx512Kernels() {
#if defined(__x86_64__) && !defined(MERGESERVE_NO_CPU_DISPATCH)
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512 && !portable_for_test.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

void SetPortableKernelsForTest(bool portable) {
  portable_for_test.store(portable, std::memory_order_relaxed);
}

}  // namespace mergeserve
