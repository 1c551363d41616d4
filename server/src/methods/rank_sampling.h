// DELLA's rank sampling: each row's magnitudes ranked, and entries kept with
// a probability that grows with their rank (MAGPRUNE, Deep et al. 2024).
//
// The ranks are torch.sort(stable=True)'s: ascending |x|, equal values by
// index, as the ATen path ranks them, so both paths keep the same entries.
// Non-negative floats order as their bit patterns, so rows are ranked as
// 32-bit keys. Task-vector magnitudes spread over a few hundred values of
// their top 16 bits and rarely use the low 16 (differences of bf16 weights),
// which the counting passes here rely on for speed, not for correctness.
#ifndef MERGESERVE_METHODS_RANK_SAMPLING_H_
#define MERGESERVE_METHODS_RANK_SAMPLING_H_

#include <cstdint>
#include <vector>

namespace mergeserve {

// A worker's scratch, kept from row to row: keys, bucket ids, per-bucket
// counts (zero between rows) and probabilities, and the table of p by rank.
struct RankScratch {
  std::vector<uint32_t> key[5], idx, at, rank;
  std::vector<uint64_t> seen;    // buckets a row touched
  std::vector<uint64_t> bounds;  // p of each bucket's first and last rank
  std::vector<uint64_t> pairs;   // (key, index) of rows sorted whole
  std::vector<float> p;          // p by rank for (p_cols, p_density, p_eps)
  int64_t p_cols = 0;
  double p_density = 0, p_eps = 0;
};

// rank[j] = the stable ascending rank of |x[j]| within the row x[0..cols).
void RowRanks(const float* x, int64_t cols, RankScratch& scratch,
              uint32_t* rank);

// DELLA's marks for `cnt` entries of whole rows of `cols`: kept where
// u[j] < p = rank/(cols-1)·2ε + (d−ε) (d for one-column rows), in the ATen
// path's float operations and order. mark[j] = 0 where dropped, else 1/p
// when `inverse` (rescaling by 1/p), else 1.
void MarkRankSampled(const float* tv, const float* u, int64_t cnt, int64_t cols,
                     double density, double eps, bool inverse,
                     RankScratch& scratch, float* mark);

}  // namespace mergeserve

#endif  // MERGESERVE_METHODS_RANK_SAMPLING_H_
