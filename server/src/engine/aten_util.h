// Bridges between the engine's mapped tensors and ATen. Only the .cc files
// that run ATen math include this (it pulls in LibTorch headers).
#ifndef MERGESERVE_ENGINE_ATEN_UTIL_H_
#define MERGESERVE_ENGINE_ATEN_UTIL_H_

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>

#include <string>

#include "absl/status/statusor.h"
#include "mergeserve/engine/merge_method.h"
#include "mergeserve/engine/merge_plan.h"

namespace mergeserve {

// The view as an fp32 tensor on `device`. On CPU with F32 data this aliases
// the mapped file (zero copy): callers must never modify it in place.
absl::StatusOr<at::Tensor> ViewToF32(const TensorView& view,
                                     const std::string& device);
// Same, with a NaN/Inf check that names the tensor and model.
absl::StatusOr<at::Tensor> LoadChecked(const TensorView& view,
                                       const std::string& device,
                                       const std::string& model_ref);
// Sends a tensor with `numel` elements to the sink (any device, any float
// dtype).
absl::Status WriteToSink(const at::Tensor& t, TensorSink& sink);
// Runs fn, turning a c10::Error (ATen's exceptions) into a Status.
template <typename Fn>
absl::Status CatchAten(const char* what, Fn&& fn);

// Model `model`'s tensor (-1: the base's), flattened to the tensor's shape,
// as float64 on the backend's device; NaN/Inf are an error naming it.
absl::StatusOr<at::Tensor> LoadF64(const MergePlan& plan,
                                   const PlannedTensor& t, int model,
                                   const ExecContext& ctx);

absl::Status AtenError(const char* what, const std::exception& e);

template <typename Fn>
absl::Status CatchAten(const char* what, Fn&& fn) {
  try {
    return fn();
  } catch (const std::exception& e) {
    return AtenError(what, e);
  }
}

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_ATEN_UTIL_H_
