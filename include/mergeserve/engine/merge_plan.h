// The planner: opens every checkpoint a config names, checks that they fit
// together (names, shapes, dtypes, parameters) and lays out, per output
// tensor, what to read and what to write. Nothing is written until a plan
// exists, so bad input never leaves a partial output.
#ifndef MERGESERVE_ENGINE_MERGE_PLAN_H_
#define MERGESERVE_ENGINE_MERGE_PLAN_H_

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/engine/merge_config.h"
#include "mergeserve/format/model_folder.h"

namespace mergeserve {

class TokenizerMerge;

// Where a model reference points: a folder path, and (optionally) the check
// every file opened from it must pass (the service's storage roots).
struct ModelLocation {
  ModelLocation(std::string p, FileCheck c = nullptr)  // NOLINT: implicit
      : path(std::move(p)), check(std::move(c)) {}
  std::string path;
  FileCheck check;
};
// Maps a model reference in the config to its location.
using ModelResolver =
    std::function<absl::StatusOr<ModelLocation>(const std::string& ref)>;
// One-shot mode: paths, relative ones against the config's folder.
ModelResolver LocalPathResolver(const std::string& source_dir);

// INVALID_ARGUMENT if `value` is outside the range every method allows for
// parameter `key` (density in [0, 1], λ and weights within ±1e6, ...),
// naming it and `where`; OK for keys without one. MergePlan::Create checks
// every number of a config with it.
absl::Status CheckParameterRange(const std::string& key, double value,
                                 const std::string& where = "");

struct PlannedModel {
  std::string ref;  // as written in the config
  const ModelFolder* folder = nullptr;
  ParamMap parameters;
  // Auxiliary checkpoints named by per-model parameters ("fisher", "gram").
  std::map<std::string, const ModelFolder*> aux;
  bool is_base = false;  // the entry names the base model
};

struct PlannedTensor {
  std::string name;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  bool merge = true;  // false: bytes copied from the reference model
  DType out_dtype;
  int layer = -1;                  // N in "layers.N.", -1 outside layers
  double layer_t = 0;              // layer position in [0, 1] for gradients
  TensorView reference;            // base, or the first model without a base
  TensorView base;                 // data == nullptr without a base
  std::vector<TensorView> models;  // one per PlannedModel (merged tensors)
  // Stacked slices (passthrough): the source tensor's name, where the
  // output renumbers its layer; per-model parameters are looked up with it
  // (mergekit's plan_tensor). Only the slice's source has a view in
  // `models` (the others have data == nullptr).
  std::string input_name;
  // Under `modules:`: the index in MergePlan::modules(), else -1.
  int module = -1;

  uint64_t out_bytes() const {
    return static_cast<uint64_t>(numel) * DTypeSize(out_dtype);
  }
  // Elements per row: shape[0] rows of a tensor with two or more dims, one
  // row for a vector (DELLA ranks within rows).
  int64_t row_length() const {
    const int64_t rows = shape.size() >= 2 ? shape[0] : 1;
    return rows > 0 ? numel / rows : numel;
  }
};

// A module under `modules:` with what merges it: its parameters and each
// planned model's own (by index in MergePlan::models()).
struct PlannedModule {
  std::string name;
  ParamMap parameters;
  ParamMap slice_parameters;  // a module given as a slice: the slice's own
  std::vector<ParamMap> model_parameters;
  // A module given as one slice: its layer range, checked against the
  // module's layers.
  int64_t layer_begin = -1, layer_end = -1;
};

class MergePlan {
 public:
  static absl::StatusOr<std::unique_ptr<MergePlan>> Create(
      MergeConfig config, const ModelResolver& resolver);
  // Removes the folders LoRA references were merged into.
  ~MergePlan();

  const MergeConfig& config() const { return config_; }
  const ModelFolder* base() const { return base_; }
  const ModelFolder& reference() const { return *reference_; }
  const std::vector<PlannedModel>& models() const { return models_; }
  const std::vector<PlannedTensor>& tensors() const { return tensors_; }
  const std::vector<PlannedModule>& modules() const { return modules_; }
  int num_layers() const { return num_layers_; }
  // Layers of the output when slices stack layers (passthrough), else 0.
  int stacked_layers() const { return stacked_layers_; }
  // The merged vocabulary when the config asks for one (tokenizer:,
  // tokenizer_source:), else nullptr.
  const TokenizerMerge* tokenizer() const { return tokenizer_.get(); }
  // Embedding rows of the output when they differ from the reference
  // model's config.json vocab_size (a tokenizer merge, or embeddings cut to
  // the rows every model has), else 0.
  int64_t vocab_size() const { return vocab_size_; }
  // The chat template to write into tokenizer_config.json ("": keep).
  const std::string& chat_template() const { return chat_template_; }
  // What the planner changed without failing (embeddings cut to common
  // rows), for the caller to show.
  const std::vector<std::string>& warnings() const { return warnings_; }
  // Bytes of all input files.
  uint64_t input_bytes() const;
  // DATA_LOSS naming the model and file when an input was truncated or
  // modified since the plan opened it.
  absl::Status CheckInputsUnchanged() const;
  // The same for the files `t` was read from only: cheap enough for after
  // every tensor (the whole check runs once, before the result commits).
  absl::Status CheckTensorInputsUnchanged(const PlannedTensor& t) const;

  // Parameter lookup: the model's own value, else (under `modules:`) the
  // tensor's module's, else the global one, else `fallback`. model < 0
  // skips the model's own value.
  absl::StatusOr<double> Number(const std::string& key, int model,
                                const PlannedTensor& t, double fallback) const;
  // A model-independent number that must not vary per tensor.
  absl::StatusOr<double> GlobalNumber(const std::string& key,
                                      double fallback) const;
  absl::StatusOr<bool> Bool(const std::string& key, bool fallback) const;
  absl::StatusOr<std::string> String(const std::string& key,
                                     const std::string& fallback) const;
  bool Has(const std::string& key) const;

  // The tensor of model `model` holding aux data `kind` for `t`, or an error
  // naming what is missing.
  absl::StatusOr<TensorView> Aux(int model, const std::string& kind,
                                 const std::string& tensor_name) const;

 private:
  MergePlan() = default;
  // A value read once for the whole merge (not per model or tensor): the
  // global one, or under `modules:` each module's (its slice's, its own,
  // else the global), which must then agree; null when none is given.
  absl::StatusOr<const ParamValue*> WholeMergeValue(
      const std::string& key) const;
  using OpenFn =
      std::function<absl::StatusOr<const ModelFolder*>(const std::string&)>;
  // Builds the merged vocabulary and every model's embeddings rebuilt in
  // its order (read instead of the models' own through overlays_).
  absl::Status PlanTokenizer(const OpenFn& open);
  // `modules:` as models: every module merges the same models, each with
  // its own parameters (kept in modules_).
  absl::Status PlanModuleModels();
  // `name` of folder `f`: its rebuilt embedding when there is one.
  TensorView Lookup(const ModelFolder* f, const std::string& name) const;

  MergeConfig config_;
  std::vector<std::unique_ptr<ModelFolder>> folders_;
  std::vector<std::string> folder_refs_;  // the reference that opened each
  const ModelFolder* base_ = nullptr;
  const ModelFolder* reference_ = nullptr;
  std::vector<PlannedModel> models_;
  std::vector<PlannedTensor> tensors_;
  std::vector<PlannedModule> modules_;
  int num_layers_ = 0;
  int stacked_layers_ = 0;
  std::vector<std::string> scratch_dirs_;  // model+lora, embeddings
  std::unique_ptr<TokenizerMerge> tokenizer_;
  // Input folder -> its rebuilt embeddings (tokenizer merges).
  std::map<const ModelFolder*, const ModelFolder*> overlays_;
  // Leading rows of embeddings wider than the output (views point here).
  std::deque<TensorInfo> cut_infos_;
  int64_t vocab_size_ = 0;
  std::string chat_template_;
  std::vector<std::string> warnings_;
};

// N in "...layers.N...." or "...h.N...." (GPT-2's naming), or -1.
int LayerIndexOf(const std::string& tensor_name);
// What comes before that key ("language_model.model.",
// "vision_tower.vision_model.encoder."): layers of one stack share it.
std::string LayerStackOf(const std::string& tensor_name);

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_MERGE_PLAN_H_
