// The one interface every merge method implements, and what the executor
// hands it. Methods register in method_registry.cc (one line each).
#ifndef MERGESERVE_ENGINE_MERGE_METHOD_H_
#define MERGESERVE_ENGINE_MERGE_METHOD_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "mergeserve/base/huge_buffer.h"
#include "mergeserve/base/thread_pool.h"
#include "mergeserve/engine/merge_plan.h"
#include "mergeserve/engine/task_vector_cache.h"

namespace mergeserve {

class DiagnosticsCollector;
class StagingArena;
class TensorSink;

// kFused: streaming CPU kernels (chunked, bounded memory). kAten: whole-tensor
// ATen ops on ctx.device (CPU or CUDA); methods without fused kernels always
// use ATen.
enum class Backend { kFused, kAten };

// What later merges will reuse of this one, where the caller knows (a
// sweep knows its grid). A server's jobs arrive one at a time: kGuess.
enum class CacheHint {
  // Keep the merged update q (a merge differing only in λ reads it), and
  // each expert's trimmed τ once a merge found all its trims cached (the
  // second point of a weight sweep).
  kGuess,
  // λ changes from one merge to the next (other numbers more slowly): keep
  // q, never τ (a new weight's q is kept for its row of λ values; a sweep
  // that merges a row in batches passes kNone instead).
  kUpdate,
  // Only weights change: keep the trimmed τ from the first merge on, never
  // q (no later merge has the same weights).
  kTrimmed,
  // Neither q nor τ is read again: densities (gamma, epsilon) change, or
  // a short sweep changes only weights (keeping τ would cost it more than
  // it saves; see SweepCacheHint).
  kNone,
};

struct ExecContext {
  ThreadPool* pool = nullptr;
  Backend backend = Backend::kFused;
  std::string device = "cpu";  // ATen device for kAten ("cpu", "cuda:0")
  const std::atomic<bool>* cancelled = nullptr;
  // Elements per chunk in fused passes. Fixed (never derived from the thread
  // count) so results do not depend on parallelism.
  // Collects diagnostics when set (AnalyzeMerge).
  DiagnosticsCollector* diagnostics = nullptr;
  // Reusable derived data (trim thresholds), or null.
  TaskVectorCache* cache = nullptr;
  CacheHint cache_hint = CacheHint::kGuess;
  // Where fused passes copy their input windows; null: they read the map.
  StagingArena* staging = nullptr;
  // Content digest per plan model and of the base ("" = unknown: no caching).
  std::vector<std::string> model_digests;
  std::string base_digest;
  // 16K fp32 values per model keep a worker's buffers inside L2.
  int64_t chunk_elems = int64_t{1} << 14;
  // Further outputs of this tensor that differ from the merge only in λ or
  // in some models' weights (a sweep's row of points), each written from
  // the same trimmed task vectors: base + λ·q, q merged again only where
  // the weights differ. Set per tensor by the executor, only for methods
  // whose WritesVariants() holds.
  struct VariantOutput {
    std::optional<double> lambda;                 // unset: the merge's
    std::vector<std::pair<int, double>> weights;  // (plan model, weight)
    TensorSink* sink = nullptr;
  };
  std::vector<VariantOutput> variant_outputs;

  bool is_cancelled() const {
    return cancelled != nullptr && cancelled->load(std::memory_order_relaxed);
  }
};

// Receives a merged tensor as fp32 values; converts and stores them.
class TensorSink {
 public:
  virtual ~TensorSink() = default;
  // Thread-safe for disjoint ranges.
  virtual absl::Status WriteF32(int64_t begin, const float* values,
                                int64_t count) = 0;
};

class MergeMethod {
 public:
  virtual ~MergeMethod() = default;
  // Validates the plan for this method (model count, base, parameters) and
  // runs any whole-model pass (model-scope trim thresholds, Fisher norms).
  virtual absl::Status Prepare(const MergePlan& plan, ExecContext& ctx) = 0;
  // True if MergeTensor materialises whole tensors of every model (ATen
  // paths) rather than streaming fixed chunks; valid after Prepare.
  virtual bool HoldsWholeTensors(const ExecContext& ctx) const { return true; }
  // True if MergeTensor writes ctx.variant_outputs for a merge of `plan` on
  // `backend` (with weight changes where `weights`): methods whose result
  // is base + λ·q, with q independent of λ, and of the weights only through
  // its last step.
  virtual bool WritesVariants(const MergePlan& plan, Backend backend,
                              bool weights) const {
    return false;
  }
  // Merges one floating tensor.
  virtual absl::Status MergeTensor(const MergePlan& plan,
                                   const PlannedTensor& tensor,
                                   ExecContext& ctx, TensorSink& out) = 0;
};

// Reads elements [begin, begin+count) of a view as fp32.
inline void LoadF32(const TensorView& v, int64_t begin, int64_t count,
                    float* dst) {
  const size_t es = DTypeSize(v.info->dtype);
  LoadAsF32(v.info->dtype, v.data + static_cast<size_t>(begin - v.first) * es,
            count, dst);
}

// Reads elements [begin, begin+count) of a view as fp32 minus `base` (when
// not null) in one sweep. Returns false if any element of the view is NaN or
// Inf.
bool LoadDelta(const TensorView& v, int64_t begin, int64_t count,
               const float* base, float* dst);

// Drops a view's pages from the resident set once they have been consumed.
inline void ReleaseView(const TensorView& v) {
  if (v.file != nullptr && v.data != nullptr) {
    v.file->Release(static_cast<uint64_t>(v.data - v.file->data()),
                    v.info->nbytes);
  }
}

// Calls (file.*op)(offset, length) for the bytes of elements [begin,
// begin+count) of a view backed by a mapped file.
inline void OnFileRange(const TensorView& v, int64_t begin, int64_t count,
                        void (MappedFile::*op)(uint64_t, uint64_t) const) {
  if (v.file != nullptr && v.data != nullptr) {
    const size_t es = DTypeSize(v.info->dtype);
    (v.file->*op)(static_cast<uint64_t>(v.data - v.file->data()) +
                      static_cast<uint64_t>(begin) * es,
                  static_cast<uint64_t>(count) * es);
  }
}

// Same as ReleaseView for elements [begin, begin+count) of the view.
inline void ReleaseRange(const TensorView& v, int64_t begin, int64_t count) {
  OnFileRange(v, begin, count, &MappedFile::Release);
}

// Maps elements [begin, begin+count) of the view in one call before they
// are read (see MappedFile::Populate).
inline void PopulateRange(const TensorView& v, int64_t begin, int64_t count) {
  OnFileRange(v, begin, count, &MappedFile::Populate);
}

// Asks the kernel to start reading the first `max_bytes` of t's inputs
// (base and models where t is merged, else the tensor it copies), split
// evenly over them, into the page cache. Advice only: nothing is mapped or
// copied, and pages already cached cost a lookup each (2 ms for 1.6 GiB).
// The executor calls it for the next tensor before merging one, and the
// staged passes for their next window: inputs the kernel dropped from the
// cache (a registry larger than memory, or a VM's proactive reclaim, which
// left holes a merge waited on page by page) come off the disk while the
// CPUs work.
void PrefetchInputs(const PlannedTensor& t, uint64_t max_bytes);
// Only the inputs one pass reads: the base where `base`, and `models`
// (indices into t.models), as ForEachStagedChunk takes them.
void PrefetchInputs(const PlannedTensor& t, uint64_t max_bytes, bool base,
                    const std::vector<int>& models);

// Reused memory a merge copies its input windows into (ForEachStagedChunk):
// one huge-page buffer per input slot, kept across windows, passes and
// tensors. Not thread-safe: one merge's passes run one after another.
class StagingArena {
 public:
  // Input bytes one window holds, all inputs together.
  static constexpr size_t kStagingBytes = size_t{32} << 20;
  // A tensor whose inputs take at most this is staged whole, once, and
  // held for the next pass over it (TIES reads a tensor three times).
  static constexpr size_t kHoldBytes = size_t{256} << 20;

  explicit StagingArena(size_t window_bytes = kStagingBytes,
                        size_t hold_bytes = kHoldBytes)
      : window_bytes(window_bytes), hold_bytes(hold_bytes) {}
  // At least `bytes` for input `slot`; contents undefined when it grows.
  uint8_t* Buffer(size_t slot, size_t bytes);
  // Bytes input `slot` holds now (0 before its first use).
  size_t Capacity(size_t slot) const {
    return slot < buffers_.size() ? buffers_[slot].size() : 0;
  }

  const size_t window_bytes, hold_bytes;

  // What the slots hold whole: the tensor and, per slot, the view copied.
  const PlannedTensor* held = nullptr;
  std::vector<const TensorView*> held_views;

 private:
  std::vector<HugeBuffer> buffers_;
};

// Runs fn(chunk_index, worker, inputs) over the fixed chunks of t, a window
// at a time. Before each window, its elements of t.base (when `base`) and of
// t.models[m] for m in `models` are copied from their files into `arena`
// (pread, in parallel pieces); `inputs` is t with those views pointing at
// the copies, so fn reads them with LoadDelta as it would the mapping.
//
// Why copy: the passes used to read the mapped pages, and a first touch of
// a mapped 4 KiB page costs microseconds on a virtual machine (the
// hypervisor fills its own page table), more than copying the page.
// Pages are never mapped into this process, so RSS stays at the window.
// Without an arena (or for views not backed by a file) fn reads t's views.
absl::Status ForEachStagedChunk(
    ThreadPool& pool, StagingArena* arena, const PlannedTensor& t, bool base,
    const std::vector<int>& models, int64_t chunk,
    const std::function<void(int64_t, int, const PlannedTensor&)>& fn);

// Error for a NaN/Inf found in `tensor` of model `model_ref`.
absl::Status NonFiniteError(const std::string& tensor,
                            const std::string& model_ref);
// True if every value is finite.
bool AllFinite(const float* v, int64_t n);
// A whole view as fp32 (whole-matrix methods, analyze); NaN/Inf are
// NonFiniteError(tensor, model_ref).
absl::StatusOr<std::vector<float>> LoadWholeF32(const TensorView& v,
                                                const std::string& tensor,
                                                const std::string& model_ref);

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_MERGE_METHOD_H_
