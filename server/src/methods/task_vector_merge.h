// The task-vector family (mergekit's "generalized task arithmetic"): every
// method that computes τ_i = θ_i − θ0, optionally sparsifies each τ_i, then
// either sums them (task arithmetic) or elects a sign per entry and averages
// the agreeing ones (TIES). linear, task_arithmetic, ties, dare_*,
// breadcrumbs*, della* are this class with different parts switched on; each
// has its own small file that says which.
//
// Two backends compute the same math: fused CPU kernels that stream fixed
// chunks through all models at once (bounded memory, one pass for the merge),
// and ATen whole-tensor ops that also run on CUDA. Tests hold them equal.
#ifndef MERGESERVE_METHODS_TASK_VECTOR_MERGE_H_
#define MERGESERVE_METHODS_TASK_VECTOR_MERGE_H_

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine_aten.h"
#include "mergeserve/engine/merge_method.h"
#include "methods/sparse_task_vector.h"

namespace mergeserve {

enum class Sparsify { kNone, kMagnitude, kRandom, kOutliers, kRankSampling };
enum class TrimScope { kTensor, kModel };
enum class KeepMode { kExact, kThreshold, kPaper };
enum class Consensus { kNone, kSum, kCount };
enum class ZeroSign { kPlus, kMajority };
enum class Divisor { kWeight, kCount, kNone };
enum class Rescale { kInverse, kL1, kNone };
enum class Semantics { kMergekit, kPaper, kPeft };

// What a named method fixes; the rest comes from the config.
struct TaskVectorKind {
  Sparsify sparsify = Sparsify::kNone;
  Consensus consensus = Consensus::kNone;
  bool default_normalize = false;
  bool use_base = true;  // false: linear (average the weights themselves)
  // Defaults a method changes (consensus_ties: the paper preset with the
  // disjoint sum and density 0.2); the config may still override them.
  Semantics default_semantics = Semantics::kMergekit;
  bool default_divisor_none = false;
  double default_density = 1;
};

struct TaskVectorOptions {
  Sparsify sparsify = Sparsify::kNone;
  TrimScope scope = TrimScope::kTensor;
  KeepMode keep = KeepMode::kExact;
  Consensus consensus = Consensus::kNone;
  bool sign_weighted = true;
  ZeroSign zero_sign = ZeroSign::kPlus;
  Divisor divisor = Divisor::kNone;
  Rescale rescale = Rescale::kNone;
  uint64_t seed = 0;
  bool use_base = true;
};

// How many entries a per-tensor selection keeps (top `keep`) and then drops
// again (top `drop`, breadcrumbs' outliers), for density < 1.
struct TrimCounts {
  int64_t keep = 0;
  int64_t drop = 0;
};
TrimCounts ComputeTrimCounts(const TaskVectorOptions& o, double density,
                             double gamma, int64_t numel);

absl::StatusOr<TaskVectorOptions> ResolveTaskVectorOptions(
    const MergePlan& plan, const TaskVectorKind& kind);

// floor(fraction·n), 0 at or below 0 and n at or above 1.
int64_t FloorCount(double fraction, int64_t n);

// The server cache's key of a selection: of `kind` ("tensor-trim",
// "model-trim", ...), of `model` over `tensor` (for a whole-model trim, a
// key of its domain).
std::string TrimCacheKey(const ExecContext& ctx, const TaskVectorOptions& o,
                         const char* kind, int model, const std::string& tensor,
                         int64_t keep, int64_t drop);

// "The k largest magnitudes of a domain", ties broken by lower flat index.
struct TopSet {
  enum Kind { kNone, kAll, kThreshold };
  Kind kind = kAll;
  float value = 0;
  bool all_ties = true;
  // Without all_ties: how many entries equal to `value` to keep in this
  // tensor (tensor_ties) and in each of its chunks (chunk_ties), or, with
  // ties_in_pass, the passes count each chunk's ties themselves (TieLedger)
  // and chunk_ties is empty.
  int64_t tensor_ties = 0;
  std::vector<int64_t> chunk_ties;
  bool ties_in_pass = false;
};

// Resolved per tensor; index k runs over the contributing models (experts).
struct TensorParams {
  std::vector<double> weight, density, gamma, epsilon;
  std::vector<float> scale;  // rescaling of what survives sparsification
  float lambda = 1;
  // Weights of each of ctx.variant_outputs (the merge's, with its changes).
  std::vector<std::vector<double>> variant_weight;
  // Sparsification of expert k: keep[k] minus drop[k] (drop: breadcrumbs'
  // largest outliers).
  std::vector<TopSet> keep, drop;
  int majority = 0;  // sign used where the election ties (zero_sign majority)
  // DARE's or DELLA's draws per expert, one bit per element, from the L1
  // pass.
  std::vector<std::vector<uint64_t>> sampled;
  // Trimmed task vectors in the server's cache (SelectForTensor sets the
  // keys where they can be kept; empty: not cacheable). Expert k's is
  // rebuilt from tv_cached[k] instead of read, or kept by the merge pass in
  // tv_capture[k].
  std::vector<std::string> tv_keys;
  bool trims_cached = false;  // every expert's trim came from the cache
  std::vector<std::shared_ptr<const SparseTaskVector>> tv_cached;
  std::vector<std::shared_ptr<SparseTaskVector>> tv_capture;
};

class TaskVectorMerge : public MergeMethod {
 public:
  explicit TaskVectorMerge(TaskVectorKind kind) : kind_(kind) {}

  absl::Status Prepare(const MergePlan& plan, ExecContext& ctx) override;
  absl::Status MergeTensor(const MergePlan& plan, const PlannedTensor& tensor,
                           ExecContext& ctx, TensorSink& out) override;

  // The merged update q of every element of t (out = base + λ·q), on
  // ctx's backend, without writing anything; consensus methods mask it.
  absl::Status MergedUpdate(const MergePlan& plan, const PlannedTensor& t,
                            ExecContext& ctx, float* update);

  bool HoldsWholeTensors(const ExecContext& ctx) const override {
    return ctx.backend == Backend::kAten;
  }
  // The fused pass has the trimmed τ and q in hand per chunk: a further λ
  // costs one base + λ·q and a write, other weights an election and merge
  // of the chunk, not another read of the experts.
  bool WritesVariants(const MergePlan& plan, Backend backend,
                      bool weights) const override;

  const TaskVectorOptions& options() const { return opts_; }

 private:
  absl::StatusOr<TensorParams> Resolve(const MergePlan& plan,
                                       const PlannedTensor& t,
                                       ExecContext& ctx) const;
  // Keep sets for a per-tensor selection (magnitude or outliers).
  absl::Status SelectForTensor(const MergePlan& plan, const PlannedTensor& t,
                               ExecContext& ctx, TensorParams& p) const;

  // Fused CPU path: one streaming pass over fixed chunks of the tensor.
  enum class PassMode { kL1, kCensus, kMerge };
  // Elements per chunk of a pass: ctx.chunk_elems, or whole rows for DELLA.
  int64_t PassChunk(const PlannedTensor& t, const ExecContext& ctx) const;
  struct PassResult {
    std::vector<double> l1_all, l1_kept;  // per expert, kL1
    int64_t balance = 0;                  // #(s>0) - #(s<0), kCensus
  };
  // keep_update, when set, receives the merged update q of every element
  // (kMerge), out = base + λ·q.
  absl::StatusOr<PassResult> RunPass(const MergePlan& plan,
                                     const PlannedTensor& t, TensorParams& p,
                                     ExecContext& ctx, PassMode mode,
                                     TensorSink* out,
                                     float* keep_update = nullptr) const;
  // The merged update is cached per tensor in the server, so a point of a λ
  // sweep reads only the base and q.
  std::string UpdateKey(const ExecContext& ctx, const PlannedTensor& t,
                        const TensorParams& p) const;
  absl::Status ApplyCachedUpdate(const MergePlan& plan, const PlannedTensor& t,
                                 const TensorParams& p, const float* update,
                                 ExecContext& ctx, TensorSink& out) const;
  absl::Status ComputeScale(const MergePlan& plan, const PlannedTensor& t,
                            TensorParams& p, ExecContext& ctx) const;
  // ATen path (task_vector_merge_aten.cc, in the LibTorch module, which
  // calls it through aten::MergeTaskVectors). keep_update as in RunPass.
  friend absl::Status aten::MergeTaskVectors(const TaskVectorMerge& method,
                                             const MergePlan& plan,
                                             const PlannedTensor& t,
                                             const TensorParams& p,
                                             ExecContext& ctx, TensorSink* out,
                                             float* keep_update);
  absl::Status MergeAten(const MergePlan& plan, const PlannedTensor& t,
                         const TensorParams& p, ExecContext& ctx,
                         TensorSink* out, float* keep_update = nullptr) const;
  // MergeTensor's work; out may be null when update is set.
  absl::Status Merge(const MergePlan& plan, const PlannedTensor& t,
                     ExecContext& ctx, TensorSink* out, float* update);

  TaskVectorKind kind_;
  TaskVectorOptions opts_;
  std::vector<int> experts_;  // model indices that contribute
  // trim_scope: model results, per tensor name, per expert (model_trim.h).
  std::map<std::string, std::vector<TopSet>> model_keep_;
  int model_majority_ = 0;
  // Bytes of trimmed task vectors this merge reads from the cache or keeps
  // there: it keeps no more once they would pass 3/4 of the cache, so that on
  // a model too large for it they do not evict each other (and the trims)
  // on every point.
  std::atomic<int64_t> tv_bytes_{0};
};

}  // namespace mergeserve

#endif  // MERGESERVE_METHODS_TASK_VECTOR_MERGE_H_
