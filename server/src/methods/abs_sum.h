// L1 norms summed as the L1 rescaling has always summed them: each |x[j]|
// added to a double in index order. That order is one dependent add per
// element; where no add can round, any order gives the same bits, and the
// sum runs in parallel lanes.
#ifndef MERGESERVE_METHODS_ABS_SUM_H_
#define MERGESERVE_METHODS_ABS_SUM_H_

#include <cstdint>

namespace mergeserve {

// Σ|x[j]| for j = 0..n-1, in a double, bit for bit as the index-order loop.
double IndexOrderAbsSum(const float* x, int64_t n);

// Whether adding up |x[0..n)| into a double rounds nowhere, in any order
// (a sufficient condition: false can also mean merely unproven).
bool AbsSumIsExact(const float* x, int64_t n);

// Σ|x[j]| in sixteen double lanes: IndexOrderAbsSum's bits where
// AbsSumIsExact holds (for a caller that has checked it already).
double AbsSumInLanes(const float* x, int64_t n);

}  // namespace mergeserve

#endif  // MERGESERVE_METHODS_ABS_SUM_H_
