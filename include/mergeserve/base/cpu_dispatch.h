#ifndef MERGESERVE_BASE_CPU_DISPATCH_H_
#define MERGESERVE_BASE_CPU_DISPATCH_H_

#include <vector>

// MS_CPU_DISPATCH compiles a hot element loop for AVX-512, AVX2 and baseline
// x86-64, and the dynamic loader picks the widest the CPU has when the
// process starts (target_clones: an ifunc, resolved once). Outputs are the
// same bits on every path: the build passes -ffp-contract=off, so no clone
// fuses a multiply and an add, and the loops are element-wise (floating-point
// reductions are not reassociated without -ffast-math).
// MERGESERVE_NO_CPU_DISPATCH (CMake option MERGESERVE_CPU_DISPATCH=OFF) keeps
// the baseline only, e.g. for a profile of it.
#if defined(__x86_64__) && defined(__ELF__) && \
    !defined(MERGESERVE_NO_CPU_DISPATCH)
#define MS_CPU_DISPATCH \
  __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MS_CPU_DISPATCH
#endif

namespace mergeserve {

// The sets of hand-written kernels (the ones a compiler does not produce
// from a plain loop: compressing stores, gathers, Philox in 32-bit lanes),
// narrowest first. Every set gives the same outputs.
enum class KernelSet { kPortable, kAvx2, kAvx512 };

// Whether the AVX-512 kernels run: the CPU has AVX-512F and tests have not
// limited the kernels below them.
bool Avx512Kernels();
// Whether the AVX2 kernels run (also on a CPU with AVX-512: where a kernel
// has no AVX-512 form).
bool Avx2Kernels();
// The sets this CPU runs, widest first (kPortable always).
std::vector<KernelSet> SupportedKernelSets();
// Tests: run no set wider than `widest` (kAvx512: the CPU decides again).
void LimitKernelsForTest(KernelSet widest);
const char* KernelSetName(KernelSet set);

}  // namespace mergeserve

// Around hand-written AVX-512 kernels: GCC 12's intrinsics start from
// _mm512_undefined_*() and then warn that it may be used uninitialized
// (GCC bug 105593, fixed in GCC 13).
#if defined(__GNUC__) && !defined(__clang__)
#define MS_INTRINSICS_BEGIN      \
  _Pragma("GCC diagnostic push") \
      _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define MS_INTRINSICS_END _Pragma("GCC diagnostic pop")
#else
#define MS_INTRINSICS_BEGIN
#define MS_INTRINSICS_END
#endif

#endif  // MERGESERVE_BASE_CPU_DISPATCH_H_
