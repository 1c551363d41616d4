// RI (Ramesh et al.), this project's reading of the paper, whose code is not
// public: before merging, each expert's task vector is trained on unlabeled
// auxiliary inputs so that its own head keeps the expert's predictions while
// every other task's head keeps the base model's:
//   L_i = KL(p_i(x) ‖ q_i(x)) + α/(N−1) Σ_{j≠i} KL(p0_j(x) ‖ q_j(x))
// q_j: head j on the adapted backbone θ0+τ'_i; p_i: expert i; p0_j: head j
// on the base backbone. Heads stay frozen; only tensors present in the base
// are trained (AdamW). x is drawn from the pooled auxiliary inputs of all
// tasks. Interference ξ = Σ_i E_x KL(p_i(x) ‖ head i on a merged backbone).
#ifndef MERGESERVE_EVAL_RI_ADAPTER_H_
#define MERGESERVE_EVAL_RI_ADAPTER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace mergeserve {

struct RiOptions {
  int64_t steps = 200;
  double lr = 1e-3;  // the paper's 1e-6 is for CLIP; small models need more
  double weight_decay = 1e-4;
  double alpha = 1.0;
  int64_t batch_size = 128;
  uint64_t seed = 0;
  std::string device = "cpu";
};

struct RiExpert {
  std::string program;      // the expert's TorchScript program
  std::string weights_dir;  // the expert's checkpoint
  std::string aux_data;     // safetensors with `inputs`
};

struct RiAdaptation {
  double loss_before = 0;  // L_i at τ_i (first step)
  double loss_after = 0;   // L_i after the last step (on the whole pool)
};

class RiAdapter {
 public:
  // Runs on LibTorch, whose module the binaries load on first use
  // (FAILED_PRECONDITION if it cannot be).
  static absl::StatusOr<std::unique_ptr<RiAdapter>> Create(
      const std::string& base_dir, const std::vector<RiExpert>& experts,
      const RiOptions& options);
  virtual ~RiAdapter();

  // Trains expert i and writes θ0+τ'_i (every tensor of the expert, the
  // adapted ones in F32) as a checkpoint folder at out_dir.
  virtual absl::StatusOr<RiAdaptation> Adapt(
      int expert, const std::string& out_dir,
      const std::function<void(int64_t step, int64_t steps)>& progress =
          {}) = 0;
  // ξ of a merged backbone (a checkpoint holding the adapted tensors).
  virtual absl::StatusOr<double> Interference(
      const std::string& merged_dir) = 0;
  virtual int64_t pool_size() const = 0;
};

}  // namespace mergeserve

#endif  // MERGESERVE_EVAL_RI_ADAPTER_H_
