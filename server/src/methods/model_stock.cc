// model_stock (Jang et al.): t = N·cos / (1 + (N−1)·cos) from the mean
// pairwise cosine of the task vectors; θ = t·mean θ_i + (1 − t)·θ0.
// filter_wise: one t per row instead of per tensor (mergekit).
#include <ATen/core/Tensor.h>

#include "absl/strings/str_cat.h"
#include "engine/aten_util.h"
#include "mergeserve/base/status_macros.h"
#include "methods/methods.h"

namespace mergeserve {
namespace {

class ModelStockMethod : public MergeMethod {
 public:
  absl::Status Prepare(const MergePlan& plan, ExecContext&) override {
    if (plan.base() == nullptr) {
      return absl::InvalidArgumentError("model_stock needs base_model");
    }
    experts_.clear();
    for (size_t i = 0; i < plan.models().size(); ++i) {
      if (!plan.models()[i].is_base) experts_.push_back(static_cast<int>(i));
    }
    if (experts_.size() < 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model_stock needs at least 2 models besides the base, got ",
          experts_.size()));
    }
    MS_ASSIGN_OR_RETURN(filter_wise_, plan.Bool("filter_wise", false));
    return absl::OkStatus();
  }

  absl::Status MergeTensor(const MergePlan& plan, const PlannedTensor& t,
                           ExecContext& ctx, TensorSink& out) override {
    const std::string dev = ctx.backend == Backend::kAten ? ctx.device : "cpu";
    MS_ASSIGN_OR_RETURN(at::Tensor base,
                        LoadChecked(t.base, dev, *plan.config().base_model));
    std::vector<at::Tensor> ws;
    for (int m : experts_) {
      MS_ASSIGN_OR_RETURN(
          at::Tensor w, LoadChecked(t.models[static_cast<size_t>(m)], dev,
                                    plan.models()[static_cast<size_t>(m)].ref));
      ws.push_back(w);
    }
    return CatchAten("model_stock", [&]() -> absl::Status {
      auto rows = [&](const at::Tensor& x) {
        if (filter_wise_ && x.dim() >= 1) {
          return x.reshape({-1, x.size(-1)});
        }
        return x.reshape({1, -1});
      };
      const at::Tensor w0 = rows(base);
      std::vector<at::Tensor> offsets;
      for (const auto& w : ws) offsets.push_back(rows(w) - w0);
      at::Tensor cos_sum;
      int pairs = 0;
      for (size_t i = 0; i < offsets.size(); ++i) {
        for (size_t j = i + 1; j < offsets.size(); ++j) {
          const at::Tensor norm =
              offsets[i].norm(2, {-1}) * offsets[j].norm(2, {-1});
          const at::Tensor c =
              ((offsets[i] * offsets[j]).sum(-1) / norm.clamp_min(1e-6))
                  .clamp(-1, 1);
          cos_sum = pairs == 0 ? c : cos_sum + c;
          ++pairs;
        }
      }
      const at::Tensor cos = (cos_sum / pairs).unsqueeze(-1);
      const double n = static_cast<double>(ws.size());
      const at::Tensor tt = (cos * n) / ((cos * (n - 1)) + 1);
      at::Tensor avg = rows(ws[0]);
      for (size_t i = 1; i < ws.size(); ++i) avg = avg + rows(ws[i]);
      avg = avg / n;
      return WriteToSink(tt * avg + (1 - tt) * w0, out);
    });
  }

 private:
  std::vector<int> experts_;
  bool filter_wise_ = false;
};

}  // namespace

std::unique_ptr<MergeMethod> NewModelStockMethod() {
  return std::make_unique<ModelStockMethod>();
}

}  // namespace mergeserve
