// The TIES paper's diagnostics of a merge, gathered while it streams: per
// tensor and overall, the fraction of each expert's entries the trim keeps,
// how often kept entries disagree in sign, the norms of the task vectors and
// of the merged one, and the pairwise cosines of the task vectors; and for
// every matrix, how much the tasks' top singular subspaces overlap (the
// quantity the TSV and Iso papers use to explain interference).
#ifndef MERGESERVE_ENGINE_DIAGNOSTICS_H_
#define MERGESERVE_ENGINE_DIAGNOSTICS_H_

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "mergeserve/engine/executor.h"

namespace mergeserve {

// Sums that add up across chunks and tensors (fp64, combined in order).
struct DiagnosticSums {
  int64_t numel = 0;
  std::vector<int64_t> kept;   // per expert: nonzero entries after the trim
  int64_t multi_kept = 0;      // entries kept (nonzero) by >= 2 experts
  int64_t conflicts = 0;       // ... whose kept signs disagree
  std::vector<double> tau_sq;  // per expert: Σ τ² (before the trim)
  std::vector<double> dots;    // pairwise Σ τ_i τ_j, i < j, row-major
  double merged_sq = 0;        // Σ (θ_merged − θ0)²

  void Resize(size_t experts);
  void Add(const DiagnosticSums& other);
};

struct TensorDiagnostics {
  std::string name;
  int64_t numel = 0;
  std::vector<double> kept_fraction;        // per expert
  double conflict_rate = 0;                 // conflicts / multi_kept
  std::vector<double> tau_norm;             // ‖τ_i‖₂
  double merged_norm = 0;                   // ‖τ_m‖₂ (λ included)
  std::vector<std::vector<double>> cosine;  // N × N, cos(τ_i, τ_j)
  // Matrices (2-D tensors) only, else empty / 0: for the top k = ⌊r/N⌋
  // (at least 1) left singular vectors U_i of each τ_i, ‖U_iᵀU_j‖²_F / k,
  // the mean squared cosine of the principal angles between the two
  // subspaces (1: the same subspace; about k/rows for unrelated ones).
  // `overall` holds the mean over matrices.
  std::vector<std::vector<double>> subspace_overlap;  // N × N
  int64_t subspace_rank = 0;                          // k
};

// Mean of the off-diagonal entries (0 for fewer than two experts).
double MeanPairwise(const std::vector<std::vector<double>>& m);

// One layer ("layers.N." in the names; -1: tensors outside layers).
struct LayerDiagnostics {
  int layer = -1;
  double conflict_rate = 0;     // over its tensors, weighted by size
  double subspace_overlap = 0;  // mean pairwise, over its matrices
  int matrices = 0;             // tensors with a subspace overlap
};

struct MergeDiagnostics {
  std::string method;
  std::vector<std::string> experts;
  std::vector<TensorDiagnostics> tensors;
  TensorDiagnostics overall;
  std::vector<LayerDiagnostics> layers;  // in layer order, -1 last
};

// Per-layer figures of `tensors` (for MergeDiagnostics::layers).
std::vector<LayerDiagnostics> SummarizeLayers(
    const std::vector<TensorDiagnostics>& tensors);

// The layout `mergeserve analyze --json` prints (method, experts, overall,
// tensors), and back (an analysis job's stored result).
std::string DiagnosticsToJson(const MergeDiagnostics& d);
absl::StatusOr<MergeDiagnostics> DiagnosticsFromJson(const std::string& text);

// Collects per-chunk sums from a running merge (thread-safe).
class DiagnosticsCollector {
 public:
  void Add(const std::string& tensor, int64_t chunk,
           const DiagnosticSums& sums);
  // Tensors in the order first seen; chunks of a tensor in index order.
  MergeDiagnostics Finish(const std::string& method,
                          const std::vector<std::string>& experts) const;

 private:
  struct Entry {
    std::string tensor;
    int64_t chunk;
    DiagnosticSums sums;
  };
  mutable std::mutex mu_;
  std::vector<Entry> entries_ ABSL_GUARDED_BY(mu_);
};

TensorDiagnostics Summarize(const std::string& name, const DiagnosticSums& s);

// Runs the merge a config describes without writing anything and returns
// its diagnostics. Supports the task-vector methods (linear excepted).
// Whether diagnostics cover `method` (the streaming task-vector methods),
// and the error that says they do not.
bool IsAnalyzable(const std::string& method);
absl::Status AnalyzableError(const std::string& method);

absl::StatusOr<MergeDiagnostics> AnalyzeMerge(const MergeConfig& config,
                                              MergeOptions options);
// The same on a plan already made.
absl::StatusOr<MergeDiagnostics> AnalyzeMergePlan(
    std::unique_ptr<MergePlan> plan, MergeOptions options);

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_DIAGNOSTICS_H_
