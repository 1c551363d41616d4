// model_stock on ATen, whole tensors on --device (`backend: aten`), in the
// LibTorch module (engine_aten.h); model_stock.cc streams the same math.
#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "engine/aten_util.h"
#include "engine/engine_aten.h"
#include "mergeserve/base/status_macros.h"

namespace mergeserve {
namespace aten {

absl::Status MergeModelStock(const MergePlan& plan, const PlannedTensor& t,
                             const std::vector<int>& experts, bool filter_wise,
                             ExecContext& ctx, TensorSink& out) {
  const std::string dev = ctx.backend == Backend::kAten ? ctx.device : "cpu";
  MS_ASSIGN_OR_RETURN(at::Tensor base,
                      LoadChecked(t.base, dev, *plan.config().base_model));
  std::vector<at::Tensor> ws;
  for (int m : experts) {
    MS_ASSIGN_OR_RETURN(at::Tensor w,
                        LoadChecked(t.models[static_cast<size_t>(m)], dev,
                                    plan.models()[static_cast<size_t>(m)].ref));
    ws.push_back(w);
  }
  return CatchAten("model_stock", [&]() -> absl::Status {
    auto rows = [&](const at::Tensor& x) {
      if (filter_wise && x.dim() >= 1) {
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

}  // namespace aten
}  // namespace mergeserve
