#include "eval/program_util.h"

#include "absl/strings/str_cat.h"
#include "engine/aten_util.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/format/safetensors_reader.h"

namespace mergeserve {

std::string FirstLine(const std::exception& e) {
  const std::string msg = e.what();
  return msg.substr(0, msg.find('\n'));
}

absl::StatusOr<torch::jit::Module> LoadProgram(const std::string& path,
                                               const std::string& device) {
  try {
    torch::jit::Module module = torch::jit::load(path, at::Device(device));
    module.eval();
    return module;
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot load program ", path, ": ", FirstLine(e)));
  }
}

std::map<std::string, at::Tensor> ParametersByName(
    const torch::jit::Module& module) {
  std::map<std::string, at::Tensor> params;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) {
    params[p.name] = p.value;
  }
  return params;
}

absl::StatusOr<std::vector<std::string>> LoadWeightsInto(
    torch::jit::Module& module, const ModelFolder& weights,
    const std::function<bool(const std::string&)>& filter) {
  std::vector<std::string> replaced;
  torch::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> params = ParametersByName(module);
  for (const TensorInfo* t : weights.tensors()) {
    auto it = params.find(t->name);
    if (it == params.end() || (filter && !filter(t->name))) continue;
    if (it->second.sizes().vec() != t->shape) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t->name, "' of ", weights.path(),
                       " does not fit the program's parameter of that name"));
    }
    MS_ASSIGN_OR_RETURN(at::Tensor value,
                        LoadChecked(weights.View(*t), "cpu", weights.path()));
    MS_RETURN_IF_ERROR(CatchAten("loading weights", [&]() -> absl::Status {
      it->second.copy_(value.to(it->second.scalar_type()));
      return absl::OkStatus();
    }));
    replaced.push_back(t->name);
  }
  return replaced;
}

absl::StatusOr<DatasetTensors> ReadDataset(const std::string& path,
                                           bool need_labels) {
  MS_ASSIGN_OR_RETURN(auto data, SafetensorsReader::Open(path));
  const TensorInfo* inputs = data->Find("inputs");
  const TensorInfo* labels = data->Find("labels");
  if (inputs == nullptr || inputs->shape.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset ", path, " needs an 'inputs' tensor"));
  }
  if (need_labels && labels == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset ", path, " needs 'inputs' and 'labels' tensors"));
  }
  if (labels != nullptr &&
      (labels->shape.size() != 1 || labels->shape[0] != inputs->shape[0] ||
       (labels->dtype != DType::kI64 && labels->dtype != DType::kI32))) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset ", path,
                     ": labels must be one integer per example of inputs"));
  }
  auto ints = [&](const TensorInfo* t) {
    return at::from_blob(const_cast<uint8_t*>(data->View(*t).data), t->shape,
                         at::TensorOptions().dtype(
                             t->dtype == DType::kI32 ? at::kInt : at::kLong))
        .to(at::kLong)
        .clone();  // the mapping closes on return
  };
  DatasetTensors out;
  MS_RETURN_IF_ERROR(CatchAten("reading dataset", [&]() -> absl::Status {
    if (IsMergeable(inputs->dtype)) {
      MS_ASSIGN_OR_RETURN(out.inputs, ViewToF32(data->View(*inputs), "cpu"));
      out.inputs = out.inputs.clone();
    } else if (inputs->dtype == DType::kI64 || inputs->dtype == DType::kI32) {
      out.inputs = ints(inputs);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "dataset ", path, ": inputs must be float or integer ids"));
    }
    if (labels != nullptr) out.labels = ints(labels);
    return absl::OkStatus();
  }));
  return out;
}

}  // namespace mergeserve
