// Exact k-th largest |task vector| entry over a tensor or a whole model,
// streamed in two passes with a 16-bit radix histogram each (O(n) time,
// O(1) memory in the model size): the model never has to fit in memory.
//
// For non-negative floats the IEEE bit pattern orders like the value, so the
// first pass counts the top 16 bits and the second resolves the low 16 bits
// inside the one bucket that holds the k-th entry. The first pass also
// counts, per bucket, the entries whose low 16 bits are set: the others all
// equal the bucket's smallest value, so when the k-th entry is one of them
// (in bf16 task vectors most are) the first pass alone is exact.
#ifndef MERGESERVE_ENGINE_MAGNITUDE_SELECTOR_H_
#define MERGESERVE_ENGINE_MAGNITUDE_SELECTOR_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/base/thread_pool.h"
#include "mergeserve/engine/merge_plan.h"

namespace mergeserve {

class StagingArena;

// |θ_model − θ_base| (or |θ_model| without a base) over `domain`, the k-th
// largest, 1 <= k <= total elements.
struct SelectionQuery {
  int model;
  int64_t k;
  // Wants SelectionResult::chunk_keep (ties broken by index).
  bool ties_per_chunk = false;
  // With ties_per_chunk, over several tensors: the caller's own pass counts
  // the ties of the one tensor where the kept ties run out (a TieLedger in
  // the merge pass), so that tensor is not read again to count them. Its
  // chunks are kCountInPass and SelectionResult::tensor_keep says how many
  // of its ties to keep. Applies where pass 1 alone finds the value and the
  // tensor (nearly always for bf16 task vectors); otherwise chunk_keep is
  // counted as without it.
  bool ties_in_pass = false;
};

// In SelectionResult::chunk_keep: every entry == value in the chunk.
constexpr int64_t kAllTies = INT64_MAX;
// In SelectionResult::chunk_keep: the caller counts this chunk's ties
// (SelectionQuery::ties_in_pass).
constexpr int64_t kCountInPass = INT64_MAX - 1;

struct SelectionResult {
  float value = 0;            // the k-th largest magnitude
  int64_t count_greater = 0;  // entries with magnitude > value
  int64_t count_equal = 0;    // entries with magnitude == value
  // The value was exact after the first pass (its low 16 bits are zero).
  bool from_first_pass = false;
  // With SelectionQuery::ties_per_chunk, per chunk of ChunkDomain(domain):
  // how many of its entries == value are among the k largest, which keep
  // the first k - count_greater of them in flat order (kAllTies: all).
  std::vector<int64_t> chunk_keep;
  // Where chunk_keep has kCountInPass: the first tensor_keep entries ==
  // value of that tensor, in flat order, are kept.
  int64_t tensor_keep = 0;
};

// A fixed chunking of a list of tensors, in domain (flat) order.
struct DomainChunk {
  int tensor;  // index into the domain list
  int64_t begin;
  int64_t count;
};
std::vector<DomainChunk> ChunkDomain(
    const std::vector<const PlannedTensor*>& domain, int64_t chunk_elems);

class MagnitudeSelector {
 public:
  // `staging`: where passes copy input windows (see ForEachStagedChunk);
  // null reads the mapping.
  MagnitudeSelector(const MergePlan& plan, ThreadPool& pool,
                    int64_t chunk_elems, StagingArena* staging = nullptr)
      : plan_(plan),
        pool_(pool),
        chunk_elems_(chunk_elems),
        staging_(staging) {}

  absl::StatusOr<std::vector<SelectionResult>> Select(
      const std::vector<const PlannedTensor*>& domain,
      const std::vector<SelectionQuery>& queries) const;

  // Most memory one Select over `models` models, `workers` threads and a
  // domain of `chunks` chunks can hold (histograms per worker and model,
  // bucket member lists, per-chunk tie counts), for the memory budget.
  static int64_t MemoryBound(int64_t models, int workers, int64_t chunks);

  // Entries with magnitude == value per chunk of ChunkDomain(domain), for
  // breaking ties by flat index.
  absl::StatusOr<std::vector<int64_t>> CountEqualPerChunk(
      const std::vector<const PlannedTensor*>& domain, int model,
      float value) const;

 private:
  struct Scratch {
    std::vector<float> base, value;
    std::vector<uint32_t> bits;
  };
  // fn(chunk index, chunk, worker, the chunk's tensor with its inputs
  // staged, base values or nullptr)
  using ChunkFn = std::function<absl::Status(
      size_t, const DomainChunk&, int, const PlannedTensor&, const float*)>;
  // Runs fn over every chunk, tensor by tensor (chunks of a tensor in
  // parallel), loading the base chunk first; only tensors t with
  // (*visit)[t], when given.
  absl::Status ForEachChunk(const std::vector<const PlannedTensor*>& domain,
                            const std::vector<DomainChunk>& chunks,
                            const std::vector<int>& models, const ChunkFn& fn,
                            std::vector<Scratch>& scratch,
                            const std::function<void()>& after_tensor,
                            const std::vector<bool>* visit = nullptr) const;
  absl::Status LoadBase(const PlannedTensor& t, int64_t begin, int64_t count,
                        float* base) const;
  // Fills bits[0..count) with the magnitude bit patterns of one chunk.
  absl::Status MagnitudeBits(const PlannedTensor& t, int model, int64_t begin,
                             int64_t count, const float* base, float* scratch,
                             uint32_t* bits) const;

  const MergePlan& plan_;
  ThreadPool& pool_;
  int64_t chunk_elems_;
  StagingArena* staging_;
};

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_MAGNITUDE_SELECTOR_H_
