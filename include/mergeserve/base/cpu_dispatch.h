#ifndef MERGESERVE_BASE_CPU_DISPATCH_H_
#define MERGESERVE_BASE_CPU_DISPATCH_H_

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

#endif  // MERGESERVE_BASE_CPU_DISPATCH_H_
