// Tokenizer merges (`tokenizer_source`, `tokenizer:`): an output vocabulary
// built from the models' tokenizers, and every model's embedding rows
// rebuilt in that vocabulary's order before the merge, as mergekit's
// tokenizer/build.py and embed.py do (see methods.md, "Tokenizer merges",
// and README, "Tokenizers", for where we differ from mergekit).
#ifndef MERGESERVE_ENGINE_TOKENIZER_MERGE_H_
#define MERGESERVE_ENGINE_TOKENIZER_MERGE_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/engine/merge_config.h"
#include "mergeserve/format/model_folder.h"
#include "nlohmann/json.hpp"

namespace mergeserve {

// A model the merge reads, as the tokenizer merge sees it.
struct TokenizerInput {
  std::string ref;  // as written in the config
  const ModelFolder* folder = nullptr;
};

// Tensors indexed by token id: input embeddings and output heads
// (mergekit's architecture tables mark them is_embed).
bool IsVocabTensor(const std::string& name);

class TokenizerMerge {
 public:
  // Reads every input's tokenizer.json, tokenizer_config.json and
  // config.json vocab_size and builds the output vocabulary. `inputs` are in
  // config order with the base (if any) first; `base` is its index or -1.
  // `source` is the model named by a `<model>` source (opened by the
  // caller), else nullptr. Errors name the model, file or token.
  static absl::StatusOr<std::unique_ptr<TokenizerMerge>> Build(
      const TokenizerSpec& spec, std::vector<TokenizerInput> inputs, int base,
      const ModelFolder* source);

  // Tokens of the output vocabulary (ids 0..n-1).
  int64_t num_tokens() const { return static_cast<int64_t>(tokens_.size()); }
  // Embedding rows of the output: num_tokens rounded up to
  // pad_to_multiple_of; config.json's vocab_size.
  int64_t rows() const { return rows_; }
  const std::vector<std::string>& tokens() const { return tokens_; }

  // Writes, for every input, its tensors `names` rebuilt to the output
  // vocabulary into out_dirs[i]/model.safetensors (in each tensor's dtype),
  // one row at a time. Errors name the model and tensor.
  absl::Status RebuildEmbeddings(
      const std::vector<std::string>& names,
      const std::vector<std::string>& out_dirs) const;

  // The output's tokenizer.json and tokenizer_config.json.
  std::string TokenizerJson() const;
  // With `chat_template` (already resolved) set when non-empty.
  std::string TokenizerConfigJson(const std::string& chat_template) const;
  // The folder the other tokenizer files (special_tokens_map.json,
  // generation_config.json) come from.
  const ModelFolder& source_folder() const { return *source_folder_; }

 private:
  struct Vocab {
    std::map<std::string, int64_t> ids;           // id < vocab_size only
    std::map<std::string, nlohmann::json> added;  // content -> entry
    int64_t vocab_size = 0;
  };
  TokenizerMerge() = default;
  // Row `id` of input `m`'s tensor `name` as float.
  int FindInput(const std::string& ref) const;

  TokenizerSpec spec_;
  std::vector<TokenizerInput> inputs_;
  int base_ = -1;
  std::vector<Vocab> vocabs_;  // per input
  std::vector<std::string> tokens_;
  int64_t rows_ = 0;
  const ModelFolder* source_folder_ = nullptr;
  nlohmann::json tokenizer_;         // output tokenizer.json
  nlohmann::json tokenizer_config_;  // output tokenizer_config.json (or null)
};

// The text `chat_template` names: one of the named templates (alpaca,
// chatml, exaone, llama3, mistral: mergekit's _data/chat_templates), the
// most common template among `folders` for "auto" ("" when none has one),
// or the literal template itself (it must look like Jinja).
absl::StatusOr<std::string> ResolveChatTemplate(
    const std::string& chat_template,
    const std::vector<const ModelFolder*>& folders);

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_TOKENIZER_MERGE_H_
