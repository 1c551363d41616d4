// EstimateGrams on LibTorch, in its module (eval_aten.h).
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/inliner.h>

#include <algorithm>
#include <map>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "eval/eval_aten.h"
#include "eval/program_util.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/format/safetensors_writer.h"

namespace mergeserve {
namespace {

using torch::jit::Node;
using torch::jit::Value;

// "a.b.weight" when `v` is read from the module by a chain of GetAttr.
std::optional<std::string> AttributePath(Value* v, Value* self) {
  std::vector<std::string> parts;
  while (v != self) {
    Node* n = v->node();
    if (n->kind() != c10::prim::GetAttr) return std::nullopt;
    parts.push_back(n->s(c10::attr::name));
    v = n->input(0);
  }
  std::reverse(parts.begin(), parts.end());
  return absl::StrJoin(parts, ".");
}

struct Rewritten {
  std::shared_ptr<torch::jit::Graph> graph;  // returns (out, x_1, ..., x_k)
  std::vector<std::string> weights;          // weight of x_j
};

// Copies and inlines forward's graph, then makes every captured layer input
// an output. Only layers in the top-level block (not inside if/loop) can be
// outputs; those are the layers of every feed-forward network.
absl::StatusOr<Rewritten> RewriteForGrams(torch::jit::Module& module) {
  const auto params = ParametersByName(module);
  Rewritten r;
  r.graph = module.get_method("forward").graph()->copy();
  torch::jit::Inline(*r.graph);
  Value* self = r.graph->inputs()[0];
  std::vector<Value*> captured;
  for (Node* n : r.graph->nodes()) {
    Value* weight = nullptr;
    if (n->kind() == c10::aten::linear) {
      weight = n->input(1);
    } else if ((n->kind() == c10::aten::matmul || n->kind() == c10::aten::mm) &&
               n->input(1)->node()->kind() == c10::aten::t) {
      weight = n->input(1)->node()->input(0);  // x @ W.t() is linear
    }
    if (weight == nullptr) continue;
    auto path = AttributePath(weight, self);
    if (!path || !params.count(*path) || params.at(*path).dim() != 2) continue;
    captured.push_back(n->input(0));
    r.weights.push_back(*path);
  }
  if (captured.empty()) {
    return absl::InvalidArgumentError(
        "the program's forward has no linear layer with a parameter weight");
  }
  std::vector<Value*> outs = {r.graph->outputs()[0]};
  outs.insert(outs.end(), captured.begin(), captured.end());
  Node* tuple = r.graph->insertNode(r.graph->createTuple(outs));
  r.graph->eraseOutput(0);
  r.graph->registerOutput(tuple->output());
  return r;
}

}  // namespace

namespace aten {

absl::StatusOr<std::vector<std::string>> LinearLayersOf(
    const std::string& program_path) {
  MS_ASSIGN_OR_RETURN(torch::jit::Module module,
                      LoadProgram(program_path, "cpu"));
  try {
    MS_ASSIGN_OR_RETURN(Rewritten r, RewriteForGrams(module));
    return r.weights;
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot rewrite the graph of ", program_path, ": ", FirstLine(e)));
  }
}

absl::StatusOr<GramResult> EstimateGrams(const std::string& program_path,
                                         const std::string& weights_dir,
                                         const std::string& dataset_path,
                                         const std::string& out_dir,
                                         const GramOptions& options) {
  MS_ASSIGN_OR_RETURN(DatasetTensors data,
                      ReadDataset(dataset_path, /*need_labels=*/false));
  MS_ASSIGN_OR_RETURN(torch::jit::Module module,
                      LoadProgram(program_path, options.device));
  if (!weights_dir.empty()) {
    MS_ASSIGN_OR_RETURN(auto weights, ModelFolder::Open(weights_dir));
    MS_RETURN_IF_ERROR(LoadWeightsInto(module, *weights).status());
  }
  int64_t n = data.size();
  if (options.max_examples > 0) n = std::min(n, options.max_examples);
  const int64_t batch = options.batch_size > 0 ? options.batch_size : 128;
  GramResult result;
  result.examples = n;
  // Sums of XᵀX and row counts per weight (a weight used twice adds up).
  std::map<std::string, std::pair<at::Tensor, int64_t>> sums;
  try {
    MS_ASSIGN_OR_RETURN(Rewritten r, RewriteForGrams(module));
    torch::jit::GraphFunction fn("forward_with_layer_inputs", r.graph, nullptr);
    torch::NoGradGuard no_grad;
    const at::Device device(options.device);
    for (int64_t b = 0; b < n; b += batch) {
      const int64_t e = std::min(n, b + batch);
      c10::IValue out =
          fn({module._ivalue(), data.inputs.slice(0, b, e).to(device)});
      const auto& elems = out.toTupleRef().elements();
      for (size_t j = 0; j < r.weights.size(); ++j) {
        at::Tensor x = elems[j + 1].toTensor().to(at::kFloat);
        x = x.reshape({-1, x.size(-1)});
        auto& [g, rows] = sums[r.weights[j]];
        at::Tensor xtx = x.t().matmul(x);  // fp32, as the spec asks
        g = g.defined() ? g + xtx : xtx;
        rows += x.size(0);
      }
      if (options.progress) options.progress(e, n);
    }
    for (const std::string& w : r.weights) {
      if (std::find(result.layers.begin(), result.layers.end(), w) ==
          result.layers.end()) {
        result.layers.push_back(w);
      }
    }
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("Grams of ", program_path, ": ", FirstLine(e)));
  }
  std::vector<TensorSpec> specs;
  std::vector<at::Tensor> grams;
  for (const std::string& w : result.layers) {
    auto& [g, rows] = sums[w];
    grams.push_back((g / static_cast<double>(std::max<int64_t>(rows, 1)))
                        .to(at::kFloat)
                        .cpu()
                        .contiguous());
    specs.push_back({w, DType::kF32, grams.back().sizes().vec()});
  }
  ShardedWriter::Options wo;
  wo.output_dir = out_dir;
  wo.overwrite = true;
  MS_ASSIGN_OR_RETURN(auto writer, ShardedWriter::Create(wo, specs));
  for (size_t k = 0; k < grams.size(); ++k) {
    MS_RETURN_IF_ERROR(
        writer->Write(k, 0, grams[k].data_ptr<float>(),
                      static_cast<uint64_t>(grams[k].numel()) * 4));
  }
  MS_RETURN_IF_ERROR(writer->Commit());
  return result;
}

}  // namespace aten
}  // namespace mergeserve
