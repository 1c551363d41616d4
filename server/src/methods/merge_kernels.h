// The merge pass's element loops (methods/task_vector_merge.cc): marking
// kept entries, the sign election, the disjoint mean and its divisors, λ,
// rescaling marks and kept bits, each over one chunk. They are written over
// restrict pointers and without branches so the compiler vectorises them,
// and compiled per CPU (base/cpu_dispatch.h) with the same bits out on each.
#ifndef MERGESERVE_METHODS_MERGE_KERNELS_H_
#define MERGESERVE_METHODS_MERGE_KERNELS_H_

#include <cstdint>
#include <functional>

namespace mergeserve {

struct TopSet;
class TieLedger;

// mark[j] = 1 where |tv[j]| belongs to `set` in chunk `ci`, else 0. With
// set.ties_in_pass, `ledger` tells how many of the chunk's ties to keep,
// the first ones (abandon: as TieLedger::Allow).
void MarkTopSet(const TopSet& set, int64_t ci, const float* tv, int64_t n,
                float* mark, TieLedger* ledger,
                const std::function<bool()>& abandon);

// acc += w·x.
void AddScaled(float* acc, const float* x, float w, int64_t n);

// acc += sign(w·x) (a vote of ±1, 0 for zero).
void AddSigns(float* acc, const float* x, float w, int64_t n);

// Positive minus negative entries of votes.
int64_t SignBalance(const float* votes, int64_t n);

// votes[j] = its sign, `tie` where it is zero.
void ElectSign(float* votes, float tie, int64_t n);

// acc += w·u and den += d where sign(ew·u) equals the elected sign.
void AddAgreeing(float* acc, float* den, const float* u, const float* sign,
                 float ew, float w, float d, int64_t n);

// The election and the disjoint merge of m elements in one pass: what
// AddScaled (or AddSigns when count_signs) of each tv[k] by ew[k] into zeroed
// votes, ElectSign(votes, tie), AddAgreeing(acc, den, tv[k], votes, ew[k],
// w[k], d[k]) into zeroed sums and then Quotient (divisor kNone), or
// QuotientByWeight, or QuotientByCount would write to q, the same bits:
// each element sees the same float operations in the same order, but the
// votes and sums stay in registers (those kernels each store their arrays,
// and a weight sweep's variants spent 40% of their time in them).
enum class QuotientKind { kNone, kByWeight, kByCount };
void ElectAndMerge(const float* const* tv, int n, const float* ew,
                   const float* w, const float* d, bool count_signs, float tie,
                   QuotientKind quotient, float* q, int64_t m);

// The merge's result before λ, q, in one of these forms; out = base + λ·q.
// q is computed and kept on its own (a λ-only change reuses it), in the
// float operations of computing base + λ·(...) in one expression, so
// outputs are those of that expression.
void Quotient(float* q, const float* acc, float scale, int64_t n);
void QuotientDivided(float* q, const float* acc, float divisor, int64_t n);
void QuotientByWeight(float* q, const float* acc, const float* den, int64_t n);
void QuotientByCount(float* q, const float* acc, const float* den, int64_t n);
void ApplyLambda(float* out, const float* base, const float* q, float lambda,
                 int64_t n);

// Keeps entries with |x| >= v, zeroes the others.
void TrimBelow(float* x, float v, int64_t n);

// tv *= mark, with the L1 norms of tv before and after (IndexOrderAbsSum).
void MaskAndNorms(float* tv, const float* mark, int64_t n, double* all,
                  double* kept);

// Kept marks as bits (1: mark non-zero), 64 per word, and back: tv *= bit.
void BitsFromMark(const float* mark, int64_t n, uint64_t* bits);
void MaskByBits(float* tv, const uint64_t* bits, int64_t n);

}  // namespace mergeserve

#endif  // MERGESERVE_METHODS_MERGE_KERNELS_H_
