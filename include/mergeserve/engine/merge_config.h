// A merge request in the mergekit YAML vocabulary (see README, "Config").
#ifndef MERGESERVE_ENGINE_MERGE_CONFIG_H_
#define MERGESERVE_ENGINE_MERGE_CONFIG_H_

#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/engine/param_value.h"
#include "mergeserve/format/dtype.h"

namespace mergeserve {

// Bounds on what one config may cost to parse and plan, checked before any
// work starts (a request over them is INVALID_ARGUMENT naming the bound).
// YAML aliases are counted every time they are expanded, so one anchored
// list aliased a thousand times costs what a thousand copies cost.
struct ConfigLimits {
  size_t max_text_bytes = 1 << 20;  // the document itself
  size_t max_models = 128;          // entries under models:
  size_t max_list_values = 1024;    // points of one gradient or filter list
  int64_t max_values = 100000;      // scalars read, aliases expanded
};

struct ModelEntry {
  std::string model;  // a folder path (one-shot mode) or a registered name
  ParamMap parameters;
};

// One source of a mergekit slice: layers [layer_begin, layer_end) of a
// model.
struct SliceSource {
  std::string model;
  int64_t layer_begin = 0, layer_end = 0;
  ParamMap parameters;
};

// A mergekit slice: output layers made from the same number of layers of
// each source.
struct SliceSpec {
  std::vector<SliceSource> sources;
  ParamMap parameters;  // between the sources' own and the global ones
};

// Where a token's default embedding row comes from (mergekit's
// tokenizer/config.py TokenEmbeddingConfig.source).
struct TokenSourceSpec {
  enum class Kind { kModel, kZero, kModelToken };
  Kind kind = Kind::kModel;
  std::string model;                 // kModel, kModelToken
  std::optional<int64_t> token_id;   // kModelToken: a raw row of `model`
  std::optional<std::string> token;  // kModelToken: `model`'s row of a token
};

// One entry under `tokenizer: tokens:`.
struct TokenSpec {
  std::string token;
  std::optional<TokenSourceSpec> source;
  bool force = false;  // every model gets the default row
};

// `tokenizer:` (or `tokenizer_source: X`, which is {source: X}).
struct TokenizerSpec {
  std::string source = "union";    // "union", "base" or a model reference
  std::vector<TokenSpec> tokens;   // in the order written
  int64_t pad_to_multiple_of = 0;  // 0: no padding
};

// One entry under mergekit's `modules:` (a vision-language model's text
// decoder, vision tower, projector): what merges that module's tensors.
// Exactly one of models and slices.
struct ModuleSpec {
  std::string name;
  std::vector<ModelEntry> models;
  std::vector<SliceSpec> slices;
  ParamMap parameters;  // between the models' own and the global ones
};

struct MergeConfig {
  // A stage's name in a file of several merges (mergekit-multi); unset for
  // the final merge.
  std::optional<std::string> name;
  std::string merge_method;
  std::optional<std::string> base_model;
  std::vector<ModelEntry> models;
  // mergekit's `slices:`, instead of `models:` (the plan turns one slice
  // over every layer into models; passthrough stacks several).
  std::vector<SliceSpec> slices;
  // mergekit's `modules:`, instead of models and slices (see README,
  // "Modules"): per module, in name order.
  std::vector<ModuleSpec> modules;
  ParamMap parameters;  // global; a model's own parameters override these
  std::optional<DType> dtype;
  std::optional<DType> out_dtype;
  // A merged vocabulary (see README, "Tokenizers"); unset: the reference
  // model's tokenizer files are copied.
  std::optional<TokenizerSpec> tokenizer;
  // A named template (chatml, llama3, ...), "auto" or a literal Jinja
  // template, written into the output's tokenizer_config.json.
  std::optional<std::string> chat_template;
  // Folder relative model paths resolve against (the config file's folder).
  std::string source_dir;
  // The YAML text it was parsed from.
  std::string source_text;

  // Rejects unknown keys, naming them, and anything over `limits`.
  static absl::StatusOr<MergeConfig> FromYaml(
      const std::string& text, const std::string& source_dir,
      const ConfigLimits& limits = ConfigLimits());
  static absl::StatusOr<MergeConfig> FromYamlFile(
      const std::string& path, const ConfigLimits& limits = ConfigLimits());
  // Every document of a file of several merges (`---` between them), in
  // file order; FromYaml takes files of one merge only.
  static absl::StatusOr<std::vector<MergeConfig>> AllFromYaml(
      const std::string& text, const std::string& source_dir,
      const ConfigLimits& limits = ConfigLimits());

  // The config in a canonical YAML form (keys sorted, no comments, numbers
  // that round-trip exactly): what the server stores, hashes for content
  // addressing and saves next to a merged model. FromYaml(ToYaml()) gives
  // back the same config.
  std::string ToYaml() const;
  // Every model the config reads, each once: base, models, slices'
  // sources (both parts of MODEL+LORA), per-model checkpoints (fisher,
  // gram) and a tokenizer's source model.
  std::set<std::string> References() const;
};

// Parameter keys the engine understands (mergekit's, then extensions).
bool IsKnownParameter(const std::string& key);
// Keys that are only meaningful per model (they name a checkpoint).
bool IsPerModelOnlyParameter(const std::string& key);
// A parameter value as the canonical YAML writes it (equal values, equal
// text).
std::string ParamYaml(const ParamValue& value);

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_MERGE_CONFIG_H_
