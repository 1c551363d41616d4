#include "mergeserve/engine/tokenizer_merge.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/format/safetensors_writer.h"

namespace mergeserve {
namespace {
using json = nlohmann::json;

absl::Status Invalid(const std::string& msg) {
  return absl::InvalidArgumentError(absl::StrCat("tokenizer: ", msg));
}

// A side file parsed as JSON; null when the folder has no such file.
absl::StatusOr<json> ReadJson(const ModelFolder& f, const std::string& ref,
                              const std::string& name) {
  auto text = f.ReadSideFile(name);
  if (absl::IsNotFound(text.status())) return json();
  MS_RETURN_IF_ERROR(text.status());
  json j = json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::DataLossError(absl::StrCat("tokenizer: ", name, " of model '",
                                            ref, "' is not a JSON object"));
  }
  return j;
}

// model.vocab of a tokenizer.json as (token, id): a map for BPE, WordPiece
// and WordLevel, a list of [piece, score] for Unigram (id = position).
absl::StatusOr<std::vector<std::pair<std::string, int64_t>>> ModelVocab(
    const json& tok, const std::string& ref) {
  std::vector<std::pair<std::string, int64_t>> out;
  const json* vocab = nullptr;
  if (tok.contains("model") && tok["model"].is_object() &&
      tok["model"].contains("vocab")) {
    vocab = &tok["model"]["vocab"];
  }
  if (vocab == nullptr) {
    return absl::DataLossError(absl::StrCat(
        "tokenizer: tokenizer.json of model '", ref, "' has no model.vocab"));
  }
  if (vocab->is_object()) {
    for (auto it = vocab->begin(); it != vocab->end(); ++it) {
      if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0) {
        return absl::DataLossError(
            absl::StrCat("tokenizer: tokenizer.json of model '", ref,
                         "' gives token '", it.key(), "' a bad id"));
      }
      out.emplace_back(it.key(), it.value().get<int64_t>());
    }
  } else if (vocab->is_array()) {
    int64_t id = 0;
    for (const json& e : *vocab) {
      if (!e.is_array() || e.empty() || !e[0].is_string()) {
        return absl::DataLossError(
            absl::StrCat("tokenizer: tokenizer.json of model '", ref,
                         "' has a malformed Unigram vocab entry"));
      }
      out.emplace_back(e[0].get<std::string>(), id++);
    }
  } else {
    return absl::DataLossError(
        absl::StrCat("tokenizer: tokenizer.json of model '", ref,
                     "' has a bad model.vocab"));
  }
  return out;
}

absl::Status CheckAddedTokens(const json& tok, const std::string& ref) {
  if (!tok.contains("added_tokens")) return absl::OkStatus();
  if (!tok["added_tokens"].is_array()) {
    return absl::DataLossError(absl::StrCat(
        "tokenizer: added_tokens of model '", ref, "' is not a list"));
  }
  for (const json& e : tok["added_tokens"]) {
    if (!e.is_object() || !e.contains("id") || !e["id"].is_number_integer() ||
        e["id"].get<int64_t>() < 0 || !e.contains("content") ||
        !e["content"].is_string()) {
      return absl::DataLossError(
          absl::StrCat("tokenizer: an added token of model '", ref,
                       "' lacks an id or content"));
    }
  }
  return absl::OkStatus();
}

// Removes tokens with id >= vocab_size from model.vocab, added_tokens and
// BPE merges (mergekit's get_stripped_tokenizer).
void Strip(json& tok, int64_t vocab_size) {
  std::set<std::string> removed;
  json& vocab = tok["model"]["vocab"];
  if (vocab.is_object()) {
    for (auto it = vocab.begin(); it != vocab.end();) {
      if (it.value().get<int64_t>() >= vocab_size) {
        removed.insert(it.key());
        it = vocab.erase(it);
      } else {
        ++it;
      }
    }
  } else if (vocab.is_array() &&
             static_cast<int64_t>(vocab.size()) > vocab_size) {
    for (size_t i = static_cast<size_t>(vocab_size); i < vocab.size(); ++i) {
      removed.insert(vocab[i][0].get<std::string>());
    }
    vocab.erase(vocab.begin() + vocab_size, vocab.end());
  }
  if (tok.contains("added_tokens")) {
    json kept = json::array();
    for (const json& e : tok["added_tokens"]) {
      if (e["id"].get<int64_t>() < vocab_size) {
        kept.push_back(e);
      } else {
        removed.insert(e["content"].get<std::string>());
      }
    }
    tok["added_tokens"] = kept;
  }
  if (removed.empty() || !tok["model"].contains("merges") ||
      !tok["model"]["merges"].is_array()) {
    return;
  }
  json kept = json::array();
  for (const json& m : tok["model"]["merges"]) {
    std::string a, b;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos) {
        kept.push_back(m);
        continue;
      }
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() &&
               m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      kept.push_back(m);
      continue;
    }
    if (removed.count(a) || removed.count(b) || removed.count(a + b)) continue;
    kept.push_back(m);
  }
  tok["model"]["merges"] = kept;
}

// config.json's vocab_size (also under text_config), or -1.
int64_t ConfigVocabSize(const json& config) {
  if (config.is_object()) {
    if (config.contains("vocab_size") &&
        config["vocab_size"].is_number_integer()) {
      return config["vocab_size"].get<int64_t>();
    }
    if (config.contains("text_config") && config["text_config"].is_object()) {
      return ConfigVocabSize(config["text_config"]);
    }
  }
  return -1;
}

json PlainAddedToken(const std::string& content, int64_t id) {
  return json{{"id", id},        {"content", content}, {"single_word", false},
              {"lstrip", false}, {"rstrip", false},    {"normalized", true},
              {"special", false}};
}

// Every token of a tokenizer.json by id, which must run 0..n-1.
absl::StatusOr<std::vector<std::string>> TokensById(const json& tok,
                                                    const std::string& ref) {
  std::map<int64_t, std::string> by_id;
  MS_ASSIGN_OR_RETURN(auto vocab, ModelVocab(tok, ref));
  for (const auto& [t, id] : vocab) by_id.emplace(id, t);
  if (tok.contains("added_tokens")) {
    for (const json& e : tok["added_tokens"]) {
      by_id.emplace(e["id"].get<int64_t>(), e["content"].get<std::string>());
    }
  }
  std::vector<std::string> out;
  for (const auto& [id, t] : by_id) {
    if (id != static_cast<int64_t>(out.size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tokenizer: the tokenizer of model '", ref, "' has no token with id ",
          out.size(), " (its ids must run 0..n-1)"));
    }
    out.push_back(t);
  }
  return out;
}

}  // namespace

bool IsVocabTensor(const std::string& name) {
  for (const char* suffix :
       {"embed_tokens.weight", "lm_head.weight", "wte.weight",
        "word_embeddings.weight", "embed_out.weight", "tok_embeddings.weight",
        "embed_in.weight", "shared.weight"}) {
    if (absl::EndsWith(name, suffix)) {
      const size_t at = name.size() - std::strlen(suffix);
      if (at == 0 || name[at - 1] == '.') return true;
    }
  }
  return name == "output.weight";
}

int TokenizerMerge::FindInput(const std::string& ref) const {
  for (size_t i = 0; i < inputs_.size(); ++i) {
    if (inputs_[i].ref == ref) return static_cast<int>(i);
  }
  return -1;
}

absl::StatusOr<std::unique_ptr<TokenizerMerge>> TokenizerMerge::Build(
    const TokenizerSpec& spec, std::vector<TokenizerInput> inputs, int base,
    const ModelFolder* source) {
  std::unique_ptr<TokenizerMerge> tm(new TokenizerMerge());
  tm->spec_ = spec;
  tm->inputs_ = std::move(inputs);
  tm->base_ = base;
  const size_t n_in = tm->inputs_.size();
  const size_t ref_index = base >= 0 ? static_cast<size_t>(base) : 0;
  const TokenizerInput& ref = tm->inputs_[ref_index];

  // Step 1: the base vocabulary, stripped of ids at or past vocab_size.
  MS_ASSIGN_OR_RETURN(json base_tok,
                      ReadJson(*ref.folder, ref.ref, "tokenizer.json"));
  if (base_tok.is_null()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "tokenizer: model '", ref.ref,
        "' has no tokenizer.json; a tokenizer merge starts from the ",
        base >= 0 ? "base model's" : "first model's", " tokenizer"));
  }
  MS_RETURN_IF_ERROR(CheckAddedTokens(base_tok, ref.ref));
  MS_ASSIGN_OR_RETURN(json base_config,
                      ReadJson(*ref.folder, ref.ref, "config.json"));
  MS_ASSIGN_OR_RETURN(json base_tok_config,
                      ReadJson(*ref.folder, ref.ref, "tokenizer_config.json"));
  const int64_t base_size = ConfigVocabSize(base_config);
  // Strip walks what ModelVocab checks.
  MS_RETURN_IF_ERROR(ModelVocab(base_tok, ref.ref).status());
  if (base_size >= 0) Strip(base_tok, base_size);

  // Every input's vocabulary (a model without tokenizer files has the
  // base's, as mergekit assumes).
  tm->vocabs_.resize(n_in);
  std::vector<json> toks(n_in);
  for (size_t m = 0; m < n_in; ++m) {
    const TokenizerInput& in = tm->inputs_[m];
    MS_ASSIGN_OR_RETURN(json config,
                        ReadJson(*in.folder, in.ref, "config.json"));
    Vocab& v = tm->vocabs_[m];
    v.vocab_size = ConfigVocabSize(config);
    if (m == ref_index) {
      toks[m] = base_tok;
    } else {
      MS_ASSIGN_OR_RETURN(toks[m],
                          ReadJson(*in.folder, in.ref, "tokenizer.json"));
      if (toks[m].is_null()) toks[m] = base_tok;
      MS_RETURN_IF_ERROR(CheckAddedTokens(toks[m], in.ref));
    }
    if (v.vocab_size < 0) v.vocab_size = int64_t{1} << 62;
    MS_ASSIGN_OR_RETURN(auto vocab, ModelVocab(toks[m], in.ref));
    // Ids past the model's vocab_size are padding: ignored everywhere.
    for (const auto& [t, id] : vocab) {
      if (id < v.vocab_size) v.ids.emplace(t, id);
    }
    if (toks[m].contains("added_tokens")) {
      for (const json& e : toks[m]["added_tokens"]) {
        const int64_t id = e["id"].get<int64_t>();
        if (id >= v.vocab_size) continue;
        const std::string content = e["content"].get<std::string>();
        v.ids.emplace(content, id);
        v.added.emplace(content, e);
      }
    }
  }

  // Step 2: the output vocabulary.
  std::map<std::string, int64_t> present;
  auto add = [&](const std::string& t, json entry) {
    const int64_t id = static_cast<int64_t>(tm->tokens_.size());
    entry["id"] = id;
    tm->tokenizer_["added_tokens"].push_back(std::move(entry));
    tm->tokens_.push_back(t);
    present.emplace(t, id);
  };
  if (spec.source == "base" || spec.source == "union") {
    tm->tokenizer_ = base_tok;
    tm->tokenizer_config_ = base_tok_config;
    tm->source_folder_ = ref.folder;
  } else {
    if (source == nullptr) {
      return Invalid(absl::StrCat("source '", spec.source, "' was not opened"));
    }
    MS_ASSIGN_OR_RETURN(tm->tokenizer_,
                        ReadJson(*source, spec.source, "tokenizer.json"));
    if (tm->tokenizer_.is_null()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "tokenizer: source model '", spec.source, "' has no tokenizer.json"));
    }
    MS_RETURN_IF_ERROR(CheckAddedTokens(tm->tokenizer_, spec.source));
    MS_ASSIGN_OR_RETURN(
        tm->tokenizer_config_,
        ReadJson(*source, spec.source, "tokenizer_config.json"));
    tm->source_folder_ = source;
  }
  if (!tm->tokenizer_.contains("added_tokens") ||
      !tm->tokenizer_["added_tokens"].is_array()) {
    tm->tokenizer_["added_tokens"] = json::array();
  }
  const std::string where =
      spec.source == "base" || spec.source == "union" ? ref.ref : spec.source;
  MS_ASSIGN_OR_RETURN(tm->tokens_, TokensById(tm->tokenizer_, where));
  for (size_t i = 0; i < tm->tokens_.size(); ++i) {
    present.emplace(tm->tokens_[i], static_cast<int64_t>(i));
  }
  if (spec.source == "union") {
    // (a) plain tokens new to the base that no model adds as an added
    // token, then (b) the added tokens, with their first holder's flags;
    // models in config order, a model's tokens by id.
    std::set<std::string> any_added;
    for (const Vocab& v : tm->vocabs_) {
      for (const auto& [t, e] : v.added) any_added.insert(t);
    }
    auto by_id = [](const Vocab& v) {
      std::vector<std::pair<int64_t, std::string>> out;
      for (const auto& [t, id] : v.ids) out.emplace_back(id, t);
      std::sort(out.begin(), out.end());
      return out;
    };
    for (const Vocab& v : tm->vocabs_) {
      for (const auto& [id, t] : by_id(v)) {
        if (!present.count(t) && !any_added.count(t)) {
          add(t, PlainAddedToken(t, 0));
        }
      }
    }
    for (const Vocab& v : tm->vocabs_) {
      for (const auto& [id, t] : by_id(v)) {
        auto it = v.added.find(t);
        if (it != v.added.end() && !present.count(t)) add(t, it->second);
      }
    }
  }
  for (const TokenSpec& t : spec.tokens) {
    if (!present.count(t.token)) add(t.token, PlainAddedToken(t.token, 0));
  }
  // added_tokens sorted by id (HF re-adds them in file order).
  std::stable_sort(tm->tokenizer_["added_tokens"].begin(),
                   tm->tokenizer_["added_tokens"].end(),
                   [](const json& a, const json& b) {
                     return a["id"].get<int64_t>() < b["id"].get<int64_t>();
                   });

  // Named tokens' sources must exist before any row is read.
  for (const TokenSpec& t : spec.tokens) {
    if (!t.source || t.source->kind == TokenSourceSpec::Kind::kZero) continue;
    const int m = tm->FindInput(t.source->model);
    if (m < 0) {
      return Invalid(absl::StrCat("tokens['", t.token,
                                  "'] takes its row from '", t.source->model,
                                  "', which is not one of the merge's models"));
    }
    const std::string& lookup = t.source->token ? *t.source->token : t.token;
    if (!t.source->token_id &&
        !tm->vocabs_[static_cast<size_t>(m)].ids.count(lookup)) {
      return Invalid(absl::StrCat("tokens['", t.token, "']: model '",
                                  t.source->model, "' has no token '", lookup,
                                  "'"));
    }
  }

  const int64_t n = tm->num_tokens();
  const int64_t pad = spec.pad_to_multiple_of;
  tm->rows_ = pad > 1 ? (n + pad - 1) / pad * pad : n;

  // tokenizer_config.json: its added_tokens_decoder lists the same tokens.
  if (tm->tokenizer_config_.is_object()) {
    json decoder = json::object();
    for (const json& e : tm->tokenizer_["added_tokens"]) {
      json d = json::object();
      for (const char* k : {"content", "lstrip", "normalized", "rstrip",
                            "single_word", "special"}) {
        if (e.contains(k)) d[k] = e[k];
      }
      decoder[std::to_string(e["id"].get<int64_t>())] = d;
    }
    tm->tokenizer_config_["added_tokens_decoder"] = decoder;
  }
  return tm;
}

std::string TokenizerMerge::TokenizerJson() const {
  return tokenizer_.dump(2) + "\n";
}

std::string TokenizerMerge::TokenizerConfigJson(
    const std::string& chat_template) const {
  json cfg = tokenizer_config_.is_object() ? tokenizer_config_ : json::object();
  if (!chat_template.empty()) cfg["chat_template"] = chat_template;
  return cfg.dump(2) + "\n";
}

absl::Status TokenizerMerge::RebuildEmbeddings(
    const std::vector<std::string>& names,
    const std::vector<std::string>& out_dirs) const {
  const size_t n_in = inputs_.size();
  std::map<std::string, const TokenSpec*> named;
  for (const TokenSpec& t : spec_.tokens) named[t.token] = &t;

  // Per input and tensor: the view; all inputs' tensors have the same
  // columns.
  std::vector<std::vector<TensorView>> views(n_in);
  std::vector<int64_t> cols(names.size());
  for (size_t k = 0; k < names.size(); ++k) {
    for (size_t m = 0; m < n_in; ++m) {
      const TokenizerInput& in = inputs_[m];
      const TensorInfo* info = in.folder->Find(names[k]);
      if (info == nullptr) {
        return absl::NotFoundError(absl::StrCat("tokenizer: tensor '", names[k],
                                                "' is missing from model '",
                                                in.ref, "'"));
      }
      if (info->shape.size() != 2 || !IsMergeable(info->dtype)) {
        return Invalid(absl::StrCat("tensor '", names[k], "' of model '",
                                    in.ref,
                                    "' is not a floating [rows, columns] "
                                    "embedding"));
      }
      if (m == 0) cols[k] = info->shape[1];
      if (info->shape[1] != cols[k]) {
        return Invalid(absl::StrCat("tensor '", names[k], "' has ",
                                    info->shape[1], " columns in model '",
                                    in.ref, "' but ", cols[k], " in model '",
                                    inputs_[0].ref, "'"));
      }
      views[m].push_back(in.folder->View(*info));
    }
  }
  std::vector<std::unique_ptr<ShardedWriter>> writers(n_in);
  for (size_t m = 0; m < n_in; ++m) {
    std::vector<TensorSpec> specs;
    for (size_t k = 0; k < names.size(); ++k) {
      specs.push_back({names[k], views[m][k].info->dtype, {rows_, cols[k]}});
    }
    MS_ASSIGN_OR_RETURN(writers[m],
                        SingleFileWriter(out_dirs[m], std::move(specs)));
  }

  // A row of input m's tensor k, bounds-checked, as float.
  auto row_of = [&](size_t m, size_t k, int64_t row,
                    float* out) -> absl::Status {
    const TensorView& v = views[m][k];
    if (row < 0 || row >= v.info->shape[0]) {
      return Invalid(absl::StrCat("row ", row, " of tensor '", names[k],
                                  "' of model '", inputs_[m].ref,
                                  "' is past its ", v.info->shape[0], " rows"));
    }
    const size_t es = DTypeSize(v.info->dtype);
    LoadAsF32(v.info->dtype, v.data + row * cols[k] * es, cols[k], out);
    return absl::OkStatus();
  };

  const int64_t n = num_tokens();
  // Each token's id in each model (-1: absent), looked up once for every
  // tensor rebuilt.
  std::vector<int64_t> ids(static_cast<size_t>(n) * n_in, -1);
  for (int64_t i = 0; i < n; ++i) {
    for (size_t m = 0; m < n_in; ++m) {
      auto f = vocabs_[m].ids.find(tokens_[static_cast<size_t>(i)]);
      if (f != vocabs_[m].ids.end()) ids[i * n_in + m] = f->second;
    }
  }
  for (size_t k = 0; k < names.size(); ++k) {
    const int64_t c = cols[k];
    std::vector<float> def(c), tmp(c);
    std::vector<std::vector<double>> sums(
        rows_ > n ? n_in : 0, std::vector<double>(static_cast<size_t>(c)));
    std::vector<unsigned char> buf;
    for (int64_t i = 0; i < n; ++i) {
      const std::string& token = tokens_[static_cast<size_t>(i)];
      auto it = named.find(token);
      const TokenSpec* ts = it == named.end() ? nullptr : it->second;
      const bool force = ts != nullptr && ts->force;
      const int64_t* own = &ids[i * n_in];
      std::vector<size_t> holders;
      for (size_t m = 0; m < n_in; ++m) {
        if (own[m] >= 0) holders.push_back(m);
      }
      // The default row, computed when some model needs it.
      bool need_default = force || holders.size() < n_in;
      if (need_default) {
        std::fill(def.begin(), def.end(), 0.0f);
        if (ts != nullptr && ts->source) {
          const TokenSourceSpec& src = *ts->source;
          if (src.kind != TokenSourceSpec::Kind::kZero) {
            const size_t m = static_cast<size_t>(FindInput(src.model));
            const int64_t row =
                src.token_id
                    ? *src.token_id
                    : vocabs_[m].ids.at(src.token ? *src.token : token);
            MS_RETURN_IF_ERROR(row_of(m, k, row, def.data()));
          }
        } else if (holders.size() == 1) {
          MS_RETURN_IF_ERROR(
              row_of(holders[0], k, own[holders[0]], def.data()));
        } else if (base_ >= 0 && own[static_cast<size_t>(base_)] >= 0) {
          MS_RETURN_IF_ERROR(row_of(static_cast<size_t>(base_), k,
                                    own[static_cast<size_t>(base_)],
                                    def.data()));
        } else if (!holders.empty()) {
          // Summed in config order, then divided (mergekit's embed.py).
          for (size_t h : holders) {
            MS_RETURN_IF_ERROR(row_of(h, k, own[h], tmp.data()));
            for (int64_t j = 0; j < c; ++j) def[j] += tmp[j];
          }
          const float count = static_cast<float>(holders.size());
          for (int64_t j = 0; j < c; ++j) def[j] /= count;
        }
      }
      for (size_t m = 0; m < n_in; ++m) {
        const TensorView& v = views[m][k];
        const DType dt = v.info->dtype;
        const size_t es = DTypeSize(dt);
        buf.resize(static_cast<size_t>(c) * es);
        const float* values = def.data();
        if (own[m] >= 0 && !force) {
          if (own[m] >= v.info->shape[0]) {
            return Invalid(absl::StrCat("token '", token, "' has id ", own[m],
                                        " in model '", inputs_[m].ref,
                                        "' but tensor '", names[k], "' has ",
                                        v.info->shape[0], " rows"));
          }
          std::memcpy(buf.data(), v.data + own[m] * c * es, buf.size());
          if (!sums.empty()) {
            LoadAsF32(dt, buf.data(), c, tmp.data());
            values = tmp.data();
          }
        } else {
          StoreFromF32(def.data(), c, dt, buf.data());
        }
        if (!sums.empty()) {
          for (int64_t j = 0; j < c; ++j) sums[m][j] += values[j];
        }
        MS_RETURN_IF_ERROR(writers[m]->Write(
            k, static_cast<uint64_t>(i) * buf.size(), buf.data(), buf.size()));
      }
    }
    // Padding rows: the mean of the model's rebuilt rows.
    for (size_t m = 0; m < sums.size(); ++m) {
      const DType dt = views[m][k].info->dtype;
      const size_t es = DTypeSize(dt);
      for (int64_t j = 0; j < c; ++j) {
        def[j] = static_cast<float>(sums[m][j] / static_cast<double>(n));
      }
      buf.resize(static_cast<size_t>(c) * es);
      StoreFromF32(def.data(), c, dt, buf.data());
      for (int64_t i = n; i < rows_; ++i) {
        MS_RETURN_IF_ERROR(writers[m]->Write(
            k, static_cast<uint64_t>(i) * buf.size(), buf.data(), buf.size()));
      }
    }
  }
  for (auto& w : writers) MS_RETURN_IF_ERROR(w->Commit());
  return absl::OkStatus();
}

}  // namespace mergeserve
