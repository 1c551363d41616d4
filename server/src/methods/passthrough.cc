// passthrough (mergekit): copies one model's tensors, each times that
// model's `scale` when given; with `slices:` the plan stacks layers from
// one source per slice and each tensor reads only its slice's source.
// Streamed in fixed chunks.
#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/status_macros.h"
#include "methods/methods.h"

namespace mergeserve {
namespace {

class PassthroughMethod : public MergeMethod {
 public:
  absl::Status Prepare(const MergePlan& plan, ExecContext&) override {
    if (plan.config().slices.empty() && plan.models().size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("passthrough copies exactly 1 model, got ",
                       plan.models().size(), " (stack layers with slices)"));
    }
    return absl::OkStatus();
  }
  bool HoldsWholeTensors(const ExecContext&) const override { return false; }

  absl::Status MergeTensor(const MergePlan& plan, const PlannedTensor& t,
                           ExecContext& ctx, TensorSink& out) override {
    int source = -1;
    for (size_t i = 0; i < t.models.size() && source < 0; ++i) {
      if (t.models[i].data != nullptr) source = static_cast<int>(i);
    }
    if (source < 0) {
      return absl::InternalError(
          absl::StrCat("passthrough: no source for tensor '", t.name, "'"));
    }
    MS_ASSIGN_OR_RETURN(double scale, plan.Number("scale", source, t, 1.0));
    const TensorView& v = t.models[static_cast<size_t>(source)];
    std::vector<float> buf(static_cast<size_t>(ctx.chunk_elems));
    for (int64_t begin = 0; begin < t.numel; begin += ctx.chunk_elems) {
      if (ctx.is_cancelled()) return absl::CancelledError("merge cancelled");
      const int64_t n = std::min(ctx.chunk_elems, t.numel - begin);
      if (!LoadDelta(v, begin, n, nullptr, buf.data())) {
        return NonFiniteError(t.name,
                              plan.models()[static_cast<size_t>(source)].ref);
      }
      if (scale != 1.0) {
        const auto s = static_cast<float>(scale);
        for (int64_t j = 0; j < n; ++j) buf[static_cast<size_t>(j)] *= s;
      }
      MS_RETURN_IF_ERROR(out.WriteF32(begin, buf.data(), n));
    }
    return absl::OkStatus();
  }
};

}  // namespace

std::unique_ptr<MergeMethod> NewPassthroughMethod() {
  return std::make_unique<PassthroughMethod>();
}

}  // namespace mergeserve
