#include "engine/aten_util.h"

#include <ATen/ops/from_blob.h>
#include <ATen/ops/isfinite.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "mergeserve/base/status_macros.h"

namespace mergeserve {
namespace {

at::ScalarType ToScalarType(DType t) {
  switch (t) {
    case DType::kF16:
      return at::kHalf;
    case DType::kBF16:
      return at::kBFloat16;
    case DType::kF64:
      return at::kDouble;
    default:
      return at::kFloat;
  }
}

}  // namespace

absl::Status AtenError(const char* what, const std::exception& e) {
  std::string msg = e.what();
  // c10 messages carry a C++ backtrace after the first line.
  const size_t nl = msg.find('\n');
  if (nl != std::string::npos) msg.resize(nl);
  return absl::InternalError(absl::StrCat(what, ": ", msg));
}

absl::StatusOr<at::Tensor> ViewToF32(const TensorView& view,
                                     const std::string& device) {
  try {
    std::vector<int64_t> shape = view.info->shape;
    at::Tensor raw = at::from_blob(
        const_cast<uint8_t*>(view.data), shape,
        at::TensorOptions().dtype(ToScalarType(view.info->dtype)));
    return raw.to(at::Device(device), at::kFloat);
  } catch (const std::exception& e) {
    return AtenError("loading tensor", e);
  }
}

absl::StatusOr<at::Tensor> LoadChecked(const TensorView& view,
                                       const std::string& device,
                                       const std::string& model_ref) {
  auto t = ViewToF32(view, device);
  if (!t.ok()) return t;
  try {
    if (!at::isfinite(*t).all().item<bool>()) {
      return NonFiniteError(view.info->name, model_ref);
    }
  } catch (const std::exception& e) {
    return AtenError("checking tensor", e);
  }
  return t;
}

absl::Status WriteToSink(const at::Tensor& t, TensorSink& sink) {
  try {
    at::Tensor cpu = t.to(at::Device(at::kCPU), at::kFloat).contiguous();
    return sink.WriteF32(0, cpu.data_ptr<float>(), cpu.numel());
  } catch (const std::exception& e) {
    return AtenError("storing tensor", e);
  }
}

absl::StatusOr<at::Tensor> LoadF64(const MergePlan& plan,
                                   const PlannedTensor& t, int model,
                                   const ExecContext& ctx) {
  const std::string dev = ctx.backend == Backend::kAten ? ctx.device : "cpu";
  const TensorView& v =
      model < 0 ? t.base : t.models[static_cast<size_t>(model)];
  const std::string& ref = model < 0
                               ? *plan.config().base_model
                               : plan.models()[static_cast<size_t>(model)].ref;
  MS_ASSIGN_OR_RETURN(at::Tensor x, LoadChecked(v, dev, ref));
  return x.to(at::kDouble);
}

}  // namespace mergeserve
