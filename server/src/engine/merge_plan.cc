#include "mergeserve/engine/merge_plan.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <random>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/engine/hub_cache.h"
#include "mergeserve/engine/lora_adapter.h"
#include "mergeserve/engine/model_modules.h"
#include "mergeserve/engine/tensor_filter.h"
#include "mergeserve/engine/tokenizer_merge.h"

namespace mergeserve {
namespace fs = std::filesystem;
namespace {
// Largest magnitude accepted for a weight, lambda or similar scale.
constexpr double kMaxScale = 1e6;

// Range checks that hold for every method. Numbers that scale the weights
// must also stay of a size no real merge needs, so overflow (weight: 1e308)
// is refused up front.
struct Range {
  const char* key;
  double lo, hi;
};
constexpr Range kRanges[] = {{"density", 0, 1},
                             {"gamma", 0, 1},
                             {"epsilon", 0, 1},
                             {"t", 0, 1},
                             {"weight", -kMaxScale, kMaxScale},
                             {"lambda", -kMaxScale, kMaxScale},
                             {"alpha", -kMaxScale, kMaxScale},
                             {"ridge", 0, kMaxScale},
                             {"scale", -kMaxScale, kMaxScale},
                             {"fisher_floor", 0, kMaxScale}};
}  // namespace

absl::Status CheckParameterRange(const std::string& key, double value,
                                 const std::string& where) {
  for (const Range& r : kRanges) {
    if (key != r.key) continue;
    if (!(value >= r.lo && value <= r.hi)) {
      return absl::InvalidArgumentError(absl::StrCat(
          r.key, " must be in [", r.lo, ", ", r.hi, "], got ", value, where));
    }
  }
  return absl::OkStatus();
}

ModelResolver LocalPathResolver(const std::string& source_dir) {
  return [source_dir](const std::string& ref) -> absl::StatusOr<std::string> {
    fs::path p(ref);
    if (p.is_relative()) p = fs::path(source_dir) / p;
    std::error_code ec;
    // A Hub id that is not a folder here comes from the shared HF cache.
    if (!fs::exists(p, ec) && LooksLikeHubId(ref)) {
      return FindInHubCache(ref, HubCacheDir());
    }
    return p.lexically_normal().string();
  };
}

namespace {

// Where "KEY.N." names a layer: `layers.N` (Llama, Mistral, ViT encoders,
// ...) or `h.N` (GPT-2, GPT-J, Falcon, Bloom), after a '.' or at the
// start, N followed by '.' or the end.
struct LayerRef {
  size_t pos = std::string::npos;  // where the key starts
  size_t end = 0;                  // just past N
  int index = -1;
};

LayerRef FindLayer(const std::string& name) {
  for (const char* key : {"layers.", "h."}) {
    const size_t klen = std::strlen(key);
    size_t pos = 0;
    while ((pos = name.find(key, pos)) != std::string::npos) {
      if (pos == 0 || name[pos - 1] == '.') {
        size_t i = pos + klen;
        int n = 0;
        size_t digits = 0;
        while (i < name.size() && digits < 7 &&
               std::isdigit(static_cast<unsigned char>(name[i]))) {
          n = n * 10 + (name[i] - '0');
          ++i;
          ++digits;
        }
        if (digits > 0 && (i == name.size() || name[i] == '.')) {
          return {pos, i, n};
        }
      }
      pos += klen;
    }
  }
  return {};
}

}  // namespace

int LayerIndexOf(const std::string& name) { return FindLayer(name).index; }

std::string LayerStackOf(const std::string& name) {
  const LayerRef r = FindLayer(name);
  return r.index < 0 ? "" : name.substr(0, r.pos);
}

namespace {

// Layers per stack (the text model's and a vision tower's are counted
// apart, as mergekit counts per module).
std::map<std::string, int> StackLayers(const ModelFolder& f) {
  std::map<std::string, std::set<int>> layers;
  for (const TensorInfo* info : f.tensors()) {
    const LayerRef r = FindLayer(info->name);
    if (r.index >= 0) layers[info->name.substr(0, r.pos)].insert(r.index);
  }
  std::map<std::string, int> out;
  for (const auto& [stack, set] : layers) {
    out[stack] = static_cast<int>(set.size());
  }
  return out;
}

// The layers of a model's largest stack (what slices count).
int CountLayers(const ModelFolder& f) {
  int most = 0;
  for (const auto& [stack, n] : StackLayers(f)) most = std::max(most, n);
  return most;
}

// `name` with its layer index `from` rewritten to `to`.
std::string WithLayer(const std::string& name, int from, int to) {
  const LayerRef r = FindLayer(name);
  if (r.index != from) return name;
  const size_t dot = name.find('.', r.pos);
  return absl::StrCat(name.substr(0, dot + 1), to, name.substr(r.end));
}

// Input embeddings: merged from the first slice's sources; every other
// tensor outside the layers from the last slice's (mergekit's architecture
// tables: the "pre" weights, e.g. llama's embed_tokens).
bool IsInputEmbedding(const std::string& name) {
  for (const char* k :
       {"embed_tokens", "wte", "wpe", "embed_in", "word_embeddings",
        "position_embeddings", "token_type_embeddings"}) {
    if (name.find(k) != std::string::npos) return true;
  }
  return false;
}

// A fresh private folder name under the temp directory.
std::string ScratchDir(const char* kind) {
  std::random_device rd;
  std::error_code ec;
  return (fs::temp_directory_path(ec) /
          absl::StrFormat("mergeserve-%s-%d-%08x%08x", kind, getpid(), rd(),
                          rd()))
      .string();
}

// Methods that merge embeddings of different row counts on the rows every
// model has (mergekit's rectify_embed_sizes); the others keep the base's.
bool TakesCommonRows(const std::string& method) {
  static const std::set<std::string> kMethods = {
      "linear", "slerp", "nuslerp", "karcher", "model_stock", "arcee_fusion"};
  return kMethods.count(method) > 0;
}

// A source's parameters over its slice's (a filter list that matches
// nothing at the source falls through to the global value, not the
// slice's; see README).
ParamMap SourceParameters(const SliceSource& src, const SliceSpec& slice) {
  ParamMap out = slice.parameters;
  for (const auto& [key, value] : src.parameters) out[key] = value;
  return out;
}

}  // namespace

MergePlan::~MergePlan() {
  folders_.clear();
  for (const std::string& dir : scratch_dirs_) {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
}

absl::StatusOr<std::unique_ptr<MergePlan>> MergePlan::Create(
    MergeConfig config, const ModelResolver& resolver) {
  std::unique_ptr<MergePlan> plan(new MergePlan());
  plan->config_ = std::move(config);
  const MergeConfig& c = plan->config_;
  std::map<std::string, const ModelFolder*> opened;  // by resolved path
  std::function<absl::StatusOr<const ModelFolder*>(const std::string&)> open;
  open = [&](const std::string& ref) -> absl::StatusOr<const ModelFolder*> {
    const size_t plus = ref.find('+');
    if (plus != std::string::npos) {
      // model+lora: the adapter merged into the model, once, into a
      // private folder (mergekit's ModelReference.merged()).
      if (ref.find('+', plus + 1) != std::string::npos || plus == 0 ||
          plus + 1 == ref.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("model '", ref,
                         "': a reference takes at most one '+' (MODEL+LORA)"));
      }
      auto it = opened.find("+" + ref);
      if (it != opened.end()) return it->second;
      MS_ASSIGN_OR_RETURN(const ModelFolder* model, open(ref.substr(0, plus)));
      MS_ASSIGN_OR_RETURN(ModelLocation adapter,
                          resolver(ref.substr(plus + 1)));
      const std::string dir = ScratchDir("lora");
      plan->scratch_dirs_.push_back(dir);
      absl::Status merged =
          MergeLoraAdapter(*model, adapter.path, adapter.check, dir);
      if (!merged.ok()) {
        return absl::Status(
            merged.code(),
            absl::StrCat("model '", ref, "': ", merged.message()));
      }
      MS_ASSIGN_OR_RETURN(auto folder, ModelFolder::Open(dir));
      plan->folders_.push_back(std::move(folder));
      plan->folder_refs_.push_back(ref);
      opened["+" + ref] = plan->folders_.back().get();
      return plan->folders_.back().get();
    }
    MS_ASSIGN_OR_RETURN(ModelLocation where, resolver(ref));
    const std::string& path = where.path;
    auto it = opened.find(path);
    if (it != opened.end()) return it->second;
    auto folder = ModelFolder::Open(path, std::move(where.check));
    if (!folder.ok()) {
      return absl::Status(
          folder.status().code(),
          absl::StrCat("model '", ref, "': ", folder.status().message()));
    }
    plan->folders_.push_back(*std::move(folder));
    plan->folder_refs_.push_back(ref);
    opened[path] = plan->folders_.back().get();
    return plan->folders_.back().get();
  };

  if (c.base_model) {
    MS_ASSIGN_OR_RETURN(plan->base_, open(*c.base_model));
  }
  if (!c.modules.empty()) MS_RETURN_IF_ERROR(plan->PlanModuleModels());
  const bool stacked = !c.slices.empty() && c.merge_method == "passthrough";
  if (!c.slices.empty() && !stacked) {
    // One slice over every layer of its sources is the `models:` form
    // (mergekit's docs write slerp this way); stacking several is
    // passthrough's.
    const SliceSpec& slice = c.slices[0];
    const SliceSource& first = slice.sources[0];
    MS_ASSIGN_OR_RETURN(const ModelFolder* f, open(first.model));
    const int layers = CountLayers(*f);
    bool whole = c.slices.size() == 1 && first.layer_begin == 0 &&
                 first.layer_end == layers;
    for (const SliceSource& src : slice.sources) {
      whole = whole && src.layer_begin == first.layer_begin &&
              src.layer_end == first.layer_end;
    }
    if (!whole) {
      return absl::InvalidArgumentError(absl::StrCat(
          "slices: ", c.merge_method,
          " merges one slice over every layer of its sources (model '",
          first.model, "' has ", layers,
          " layers); stacking layers from several slices is passthrough's"));
    }
    for (const SliceSource& src : slice.sources) {
      plan->config_.models.push_back({src.model, SourceParameters(src, slice)});
    }
  }
  for (const SliceSpec& slice : stacked ? c.slices : std::vector<SliceSpec>()) {
    if (slice.sources.size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("passthrough takes exactly one source per slice, got ",
                       slice.sources.size()));
    }
    const SliceSource& src = slice.sources[0];
    PlannedModel m;
    m.ref = src.model;
    m.parameters = SourceParameters(src, slice);
    MS_ASSIGN_OR_RETURN(m.folder, open(src.model));
    m.is_base = plan->base_ != nullptr && m.folder == plan->base_;
    const int layers = CountLayers(*m.folder);
    if (src.layer_end > layers) {
      return absl::InvalidArgumentError(absl::StrCat(
          "slices: layer_range [", src.layer_begin, ", ", src.layer_end,
          ") of model '", src.model, "' goes past its ", layers, " layers"));
    }
    plan->models_.push_back(std::move(m));
  }
  for (const ModelEntry& e : stacked ? std::vector<ModelEntry>() : c.models) {
    PlannedModel m;
    m.ref = e.model;
    m.parameters = e.parameters;
    MS_ASSIGN_OR_RETURN(m.folder, open(e.model));
    m.is_base = plan->base_ != nullptr && m.folder == plan->base_;
    for (const auto& [key, value] : e.parameters) {
      if (!IsPerModelOnlyParameter(key)) continue;
      MS_ASSIGN_OR_RETURN(std::string ref, value.AsString(key));
      MS_ASSIGN_OR_RETURN(m.aux[key], open(ref));
    }
    plan->models_.push_back(std::move(m));
  }
  plan->reference_ = plan->base_ ? plan->base_ : plan->models_[0].folder;
  if (c.tokenizer) MS_RETURN_IF_ERROR(plan->PlanTokenizer(open));
  if (c.chat_template) {
    std::vector<const ModelFolder*> folders;
    if (plan->base_) folders.push_back(plan->base_);
    for (const PlannedModel& m : plan->models_) folders.push_back(m.folder);
    MS_ASSIGN_OR_RETURN(plan->chat_template_,
                        ResolveChatTemplate(*c.chat_template, folders));
  }

  plan->num_layers_ = CountLayers(*plan->reference_);
  const std::map<std::string, int> stacks = StackLayers(*plan->reference_);

  // Which tensors are merged (the rest are copied from the reference, e.g.
  // per-task parts the base also has): a regex, default all floating ones.
  std::optional<TensorFilter> merged;
  if (auto it = c.parameters.find("merge_tensors"); it != c.parameters.end()) {
    MS_ASSIGN_OR_RETURN(std::string pattern,
                        it->second.AsString("merge_tensors"));
    MS_ASSIGN_OR_RETURN(merged, TensorFilter::Compile(pattern));
  }
  // The output's tensors: the reference's, or for stacked slices the
  // input embeddings of the first source, every slice's layers renumbered,
  // then the rest of the last source.
  struct Source {
    const TensorInfo* info;  // the name's tensor in the reference or slice
    int model = -1;          // stacked: the slice
    std::string name;
    int layer = -1;
    double layer_t = 0;
  };
  std::vector<Source> sources;
  if (stacked) {
    const size_t n = plan->models_.size();
    for (const TensorInfo* info : plan->models_[0].folder->tensors()) {
      if (LayerIndexOf(info->name) < 0 && IsInputEmbedding(info->name)) {
        sources.push_back({info, 0, info->name});
      }
    }
    int offset = 0;
    for (size_t s = 0; s < n; ++s) {
      const SliceSource& src = c.slices[s].sources[0];
      const int len = static_cast<int>(src.layer_end - src.layer_begin);
      for (const TensorInfo* info : plan->models_[s].folder->tensors()) {
        const int l = LayerIndexOf(info->name);
        if (l < src.layer_begin || l >= src.layer_end) continue;
        const int j = l - static_cast<int>(src.layer_begin);
        sources.push_back(
            {info, static_cast<int>(s), WithLayer(info->name, l, offset + j),
             offset + j, len <= 1 ? 1.0 : static_cast<double>(j) / (len - 1)});
      }
      offset += len;
    }
    for (const TensorInfo* info : plan->models_[n - 1].folder->tensors()) {
      if (LayerIndexOf(info->name) < 0 && !IsInputEmbedding(info->name)) {
        sources.push_back({info, static_cast<int>(n - 1), info->name});
      }
    }
    plan->stacked_layers_ = offset;
  } else {
    for (const TensorInfo* info : plan->reference_->tensors()) {
      sources.push_back({info, -1, info->name});
    }
  }
  // Under `modules:`, each tensor is merged as its module says; tensors of
  // modules the config leaves out are not written (as in mergekit, whose
  // planner walks only the listed modules).
  std::optional<ModelModules> modules;
  std::map<std::string, int> module_index;
  std::map<std::string, int> left_out;
  std::map<int, std::set<int>> module_layers;
  if (!c.modules.empty()) {
    modules = ModelModules::Of(*plan->reference_);
    const std::string ref = c.base_model ? *c.base_model : c.models[0].model;
    for (size_t i = 0; i < plan->modules_.size(); ++i) {
      const std::string& name = plan->modules_[i].name;
      const auto& names = modules->names();
      if (std::find(names.begin(), names.end(), name) == names.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("modules: '", name, "' is not a module of model '",
                         ref, "' (", modules->source(),
                         "; its modules: ", absl::StrJoin(names, ", "), ")"));
      }
      module_index[name] = static_cast<int>(i);
    }
  }
  for (const Source& source : sources) {
    int module = -1;
    if (modules) {
      const std::string name = modules->ModuleOf(source.name);
      auto it = module_index.find(name);
      if (it == module_index.end()) {
        ++left_out[name];
        continue;
      }
      module = it->second;
      const int layer = LayerIndexOf(source.name);
      if (layer >= 0) module_layers[module].insert(layer);
    }
    // The tensor as read: a rebuilt embedding replaces the model's own.
    const TensorView read = plan->Lookup(
        source.model >= 0
            ? plan->models_[static_cast<size_t>(source.model)].folder
            : plan->reference_,
        source.info->name);
    const TensorInfo* info = read.info;
    PlannedTensor t;
    t.name = source.name;
    t.module = module;
    t.shape = info->shape;
    t.numel = info->numel();
    t.merge =
        IsMergeable(info->dtype) && (!merged || merged->Matches(info->name));
    t.out_dtype = info->dtype;
    if (t.merge) {
      if (c.out_dtype) {
        t.out_dtype = *c.out_dtype;
      } else if (c.dtype) {
        t.out_dtype = *c.dtype;
      }
    }
    t.layer = LayerIndexOf(t.name);
    if (t.layer >= 0) {
      // t = N / (L − 1) with L the layers of this tensor's own stack.
      auto it = stacks.find(LayerStackOf(t.name));
      const int layers = it == stacks.end() ? plan->num_layers_ : it->second;
      t.layer_t =
          layers <= 1 ? 1.0 : static_cast<double>(t.layer) / (layers - 1);
    }
    if (source.model >= 0) {
      // A stacked slice: only its source is read; the gradient restarts in
      // every slice.
      t.layer = source.layer;
      t.layer_t = source.layer_t;
      t.input_name = info->name;
      t.reference = read;
      if (t.merge) {
        t.models.resize(plan->models_.size());
        t.models[static_cast<size_t>(source.model)] = t.reference;
      }
      plan->tensors_.push_back(std::move(t));
      continue;
    }
    t.reference = read;
    // Embeddings whose row counts differ without a tokenizer merge: the
    // rows every model has, or the base's (see TakesCommonRows).
    bool cut = false;
    if (t.merge && !plan->tokenizer_ && IsVocabTensor(t.name) &&
        t.shape.size() == 2) {
      std::vector<const ModelFolder*> all = {plan->reference_};
      if (plan->base_) all.push_back(plan->base_);
      for (const PlannedModel& m : plan->models_) all.push_back(m.folder);
      int64_t rows = t.shape[0];
      if (plan->base_ && !TakesCommonRows(c.merge_method)) {
        const TensorInfo* b = plan->base_->Find(t.name);
        if (b != nullptr && b->shape.size() == 2) rows = b->shape[0];
      } else {
        for (const ModelFolder* f : all) {
          const TensorInfo* o = f->Find(t.name);
          if (o != nullptr && o->shape.size() == 2 &&
              o->shape[1] == t.shape[1]) {
            rows = std::min(rows, o->shape[0]);
          }
        }
      }
      for (const ModelFolder* f : all) {
        const TensorInfo* o = f->Find(t.name);
        cut = cut || (o != nullptr && o->shape.size() == 2 &&
                      o->shape[1] == t.shape[1] && o->shape[0] != rows);
      }
      if (cut) {
        t.shape[0] = rows;
        t.numel = rows * t.shape[1];
        plan->vocab_size_ = rows;
        plan->warnings_.push_back(absl::StrCat(
            "tensor '", t.name, "': the models' row counts differ; merged on ",
            rows, " rows (",
            plan->base_ && !TakesCommonRows(c.merge_method)
                ? "the base model's"
                : "the rows every model has",
            "); name a tokenizer merge (tokenizer_source) to keep every "
            "token"));
      }
    }
    // The leading `t.shape[0]` rows of `v`.
    auto leading_rows = [&](TensorView v) {
      if (!cut || v.info->shape[0] == t.shape[0]) return v;
      TensorInfo info = *v.info;
      info.shape[0] = t.shape[0];
      info.nbytes = static_cast<uint64_t>(info.numel()) * DTypeSize(info.dtype);
      plan->cut_infos_.push_back(std::move(info));
      v.info = &plan->cut_infos_.back();
      return v;
    };
    t.reference = leading_rows(t.reference);
    if (t.merge) {
      auto check = [&](const ModelFolder* f,
                       const std::string& ref) -> absl::StatusOr<TensorView> {
        TensorView found = plan->Lookup(f, t.name);
        const TensorInfo* other = found.info;
        if (other != nullptr && cut && other->shape.size() == 2 &&
            other->shape[1] == t.shape[1] && other->shape[0] > t.shape[0]) {
          found = leading_rows(found);
          other = found.info;
        }
        if (other == nullptr) {
          return absl::NotFoundError(absl::StrCat("tensor '", t.name,
                                                  "' is missing from model '",
                                                  ref, "' (", f->path(), ")"));
        }
        if (other->shape != t.shape) {
          auto dims = [](const std::vector<int64_t>& s) {
            std::string out = "[";
            for (size_t i = 0; i < s.size(); ++i) {
              absl::StrAppend(&out, i ? ", " : "", s[i]);
            }
            return out + "]";
          };
          return absl::InvalidArgumentError(
              absl::StrCat("shape mismatch for tensor '", t.name, "': model '",
                           ref, "' has ", dims(other->shape),
                           ", the reference model has ", dims(t.shape)));
        }
        if (!IsMergeable(other->dtype)) {
          return absl::InvalidArgumentError(
              absl::StrCat("tensor '", t.name, "' of model '", ref,
                           "' has dtype ", std::string(DTypeName(other->dtype)),
                           ", which cannot be merged with ",
                           std::string(DTypeName(info->dtype))));
        }
        return found;
      };
      if (plan->base_) {
        MS_ASSIGN_OR_RETURN(t.base, check(plan->base_, *c.base_model));
      }
      for (const PlannedModel& m : plan->models_) {
        MS_ASSIGN_OR_RETURN(TensorView v, check(m.folder, m.ref));
        t.models.push_back(v);
      }
    }
    plan->tensors_.push_back(std::move(t));
  }
  for (const auto& [name, count] : left_out) {
    plan->warnings_.push_back(absl::StrCat(
        name.empty() ? "tensors no module claims"
                     : absl::StrCat("module '", name, "'"),
        " (", count, " tensor", count == 1 ? "" : "s",
        ") not under modules: left out of the output, as mergekit leaves "
        "them"));
  }
  for (size_t i = 0; i < plan->modules_.size(); ++i) {
    const PlannedModule& m = plan->modules_[i];
    if (m.layer_end < 0) continue;
    const int64_t layers =
        static_cast<int64_t>(module_layers[static_cast<int>(i)].size());
    if (m.layer_begin != 0 || m.layer_end != layers) {
      return absl::InvalidArgumentError(absl::StrCat(
          "modules: '", m.name, "' merges one slice over all of its ", layers,
          " layers here, not layer_range [", m.layer_begin, ", ", m.layer_end,
          ") (stacking layers within a module is not supported)"));
    }
  }

  // The ranges (CheckParameterRange). A per-tensor value is always
  // one of the numbers written (a filter entry's value, or a point between
  // two gradient points), so checking every number written bounds every
  // value a tensor can get, at a cost independent of the tensor count.
  auto check = [&](const ParamMap& params,
                   const std::string& where) -> absl::Status {
    for (const Range& r : kRanges) {
      auto it = params.find(r.key);
      if (it == params.end()) continue;
      std::vector<double> numbers;
      std::vector<const ParamValue*> todo = {&it->second};
      while (!todo.empty()) {
        const ParamValue* v = todo.back();
        todo.pop_back();
        if (v->is_number()) {
          numbers.push_back(*v->ResolveNumber(r.key, "", 0));
        } else if (v->is_gradient()) {
          numbers.insert(numbers.end(), v->gradient().begin(),
                         v->gradient().end());
        } else if (v->is_filters()) {
          for (const auto& e : v->filters()) todo.push_back(&e.value[0]);
        }
        // Bools and strings fail with a clearer message when resolved.
      }
      for (double v : numbers) {
        MS_RETURN_IF_ERROR(CheckParameterRange(r.key, v, where));
      }
    }
    return absl::OkStatus();
  };
  MS_RETURN_IF_ERROR(check(c.parameters, " (global)"));
  for (const PlannedModel& m : plan->models_) {
    MS_RETURN_IF_ERROR(
        check(m.parameters, absl::StrCat(" for model '", m.ref, "'")));
  }
  for (const PlannedModule& m : plan->modules_) {
    MS_RETURN_IF_ERROR(
        check(m.parameters, absl::StrCat(" (module '", m.name, "')")));
    MS_RETURN_IF_ERROR(check(m.slice_parameters,
                             absl::StrCat(" (module '", m.name, "' slice)")));
    for (size_t i = 0; i < m.model_parameters.size(); ++i) {
      MS_RETURN_IF_ERROR(
          check(m.model_parameters[i],
                absl::StrCat(" for model '", plan->models_[i].ref,
                             "' in module '", m.name, "'")));
    }
  }
  return plan;
}

absl::Status MergePlan::PlanModuleModels() {
  std::vector<std::string> refs;  // the first module's, in its order
  for (const ModuleSpec& spec : config_.modules) {
    PlannedModule m;
    m.name = spec.name;
    m.parameters = spec.parameters;
    std::vector<ModelEntry> entries = spec.models;
    if (!spec.slices.empty()) {
      const SliceSpec& slice = spec.slices[0];
      if (spec.slices.size() != 1 || config_.merge_method == "passthrough") {
        return absl::InvalidArgumentError(absl::StrCat(
            "modules: '", spec.name,
            "' stacks slices; a module merges one slice over all of its "
            "layers here (stacking layers within a module is not supported)"));
      }
      for (const SliceSource& src : slice.sources) {
        entries.push_back({src.model, src.parameters});
      }
      m.slice_parameters = slice.parameters;
      m.layer_begin = slice.sources[0].layer_begin;
      m.layer_end = slice.sources[0].layer_end;
    }
    std::vector<std::string> these;
    for (const ModelEntry& e : entries) these.push_back(e.model);
    if (std::set<std::string>(these.begin(), these.end()).size() !=
        these.size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "modules: '", spec.name, "' names a model more than once"));
    }
    if (refs.empty()) {
      refs = these;
    } else if (std::set<std::string>(these.begin(), these.end()) !=
               std::set<std::string>(refs.begin(), refs.end())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "modules: '", spec.name, "' merges ", absl::StrJoin(these, ", "),
          " but '", config_.modules[0].name, "' merges ",
          absl::StrJoin(refs, ", "),
          "; every module merges the same models here (their parameters may "
          "differ)"));
    }
    for (const std::string& ref : refs) {
      for (const ModelEntry& e : entries) {
        if (e.model == ref) m.model_parameters.push_back(e.parameters);
      }
    }
    modules_.push_back(std::move(m));
  }
  for (const std::string& ref : refs) config_.models.push_back({ref, {}});
  return absl::OkStatus();
}

TensorView MergePlan::Lookup(const ModelFolder* f,
                             const std::string& name) const {
  auto it = overlays_.find(f);
  if (it != overlays_.end()) {
    const TensorInfo* info = it->second->Find(name);
    if (info != nullptr) return it->second->View(*info);
  }
  const TensorInfo* info = f->Find(name);
  return info == nullptr ? TensorView() : f->View(*info);
}

absl::Status MergePlan::PlanTokenizer(const OpenFn& open) {
  const TokenizerSpec& spec = *config_.tokenizer;
  // Every model the merge reads, base first, each folder once.
  std::vector<TokenizerInput> inputs;
  std::set<const ModelFolder*> seen;
  if (base_) {
    inputs.push_back({*config_.base_model, base_});
    seen.insert(base_);
  }
  for (const PlannedModel& m : models_) {
    if (seen.insert(m.folder).second) inputs.push_back({m.ref, m.folder});
  }
  const ModelFolder* source = nullptr;
  if (spec.source != "base" && spec.source != "union") {
    for (const TokenizerInput& in : inputs) {
      if (in.ref == spec.source) source = in.folder;
    }
    if (source == nullptr) {
      MS_ASSIGN_OR_RETURN(source, open(spec.source));
    }
  }
  // The tokenizer files are the user's: a shape the checks missed must
  // fail this merge, not the process.
  try {
    MS_ASSIGN_OR_RETURN(tokenizer_, TokenizerMerge::Build(
                                        spec, inputs, base_ ? 0 : -1, source));
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat(
        "tokenizer: a tokenizer file is malformed (", e.what(), ")"));
  }
  std::vector<std::string> names;
  for (const TensorInfo* info : reference_->tensors()) {
    if (IsVocabTensor(info->name) && info->shape.size() == 2) {
      names.push_back(info->name);
    }
  }
  if (names.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tokenizer: the reference model has no embedding tensor (",
        "embed_tokens, lm_head, wte, ...) to rebuild for the merged "
        "vocabulary"));
  }
  std::vector<std::string> dirs;
  for (size_t i = 0; i < inputs.size(); ++i) {
    dirs.push_back(ScratchDir("embed"));
    scratch_dirs_.push_back(dirs.back());
  }
  MS_RETURN_IF_ERROR(tokenizer_->RebuildEmbeddings(names, dirs));
  for (size_t i = 0; i < inputs.size(); ++i) {
    MS_ASSIGN_OR_RETURN(auto folder, ModelFolder::Open(dirs[i]));
    folders_.push_back(std::move(folder));
    folder_refs_.push_back(
        absl::StrCat(inputs[i].ref, " (embeddings in the merged vocabulary)"));
    overlays_[inputs[i].folder] = folders_.back().get();
  }
  vocab_size_ = tokenizer_->rows();
  return absl::OkStatus();
}

absl::StatusOr<const ParamValue*> MergePlan::WholeMergeValue(
    const std::string& key) const {
  auto find = [&](const ParamMap& p) -> const ParamValue* {
    auto it = p.find(key);
    return it == p.end() ? nullptr : &it->second;
  };
  const ParamValue* global = find(config_.parameters);
  if (modules_.empty()) return global;
  const ParamValue* first = nullptr;
  for (size_t i = 0; i < modules_.size(); ++i) {
    const PlannedModule& m = modules_[i];
    const ParamValue* v = find(m.slice_parameters);
    if (v == nullptr) v = find(m.parameters);
    if (v == nullptr) v = global;
    if (i == 0) {
      first = v;
    } else if ((v == nullptr) != (first == nullptr) ||
               (v != nullptr && ParamYaml(*v) != ParamYaml(*first))) {
      auto text = [](const ParamValue* p) {
        return p == nullptr ? std::string("unset") : ParamYaml(*p);
      };
      return absl::InvalidArgumentError(absl::StrCat(
          "parameter '", key,
          "' holds for the whole merge, but the modules give it different "
          "values ('",
          modules_[0].name, "': ", text(first), ", '", m.name, "': ", text(v),
          ")"));
    }
  }
  return first;
}

bool MergePlan::Has(const std::string& key) const {
  auto v = WholeMergeValue(key);
  // Disagreeing modules: reported by the lookup that reads the value.
  return !v.ok() || *v != nullptr;
}

absl::StatusOr<double> MergePlan::Number(const std::string& key, int model,
                                         const PlannedTensor& t,
                                         double fallback) const {
  // Per model, then global, then the method's default; a filter list that
  // matches nothing at one level falls through to the next (mergekit's
  // ConfigReader.parameter).
  const PlannedModule* module =
      t.module >= 0 ? &modules_[static_cast<size_t>(t.module)] : nullptr;
  if (model >= 0) {
    // A model's own values see its input tensor's name (stacked slices
    // renumber layers), the global ones the output's.
    const auto& p = module != nullptr
                        ? module->model_parameters[static_cast<size_t>(model)]
                        : models_[static_cast<size_t>(model)].parameters;
    auto it = p.find(key);
    if (it != p.end()) {
      MS_ASSIGN_OR_RETURN(
          std::optional<double> v,
          it->second.TryResolveNumber(
              key, t.input_name.empty() ? t.name : t.input_name, t.layer_t));
      if (v) return *v;
    }
  }
  if (module != nullptr) {
    // mergekit's ConfigReader.parameter: the slice's, then the module's.
    for (const ParamMap* p : {&module->slice_parameters, &module->parameters}) {
      auto it = p->find(key);
      if (it == p->end()) continue;
      MS_ASSIGN_OR_RETURN(std::optional<double> v,
                          it->second.TryResolveNumber(key, t.name, t.layer_t));
      if (v) return *v;
    }
  }
  auto it = config_.parameters.find(key);
  if (it == config_.parameters.end()) return fallback;
  MS_ASSIGN_OR_RETURN(std::optional<double> v,
                      it->second.TryResolveNumber(key, t.name, t.layer_t));
  return v ? *v : fallback;
}

absl::StatusOr<double> MergePlan::GlobalNumber(const std::string& key,
                                               double fallback) const {
  MS_ASSIGN_OR_RETURN(const ParamValue* v, WholeMergeValue(key));
  if (v == nullptr) return fallback;
  if (!v->is_number()) {
    return absl::InvalidArgumentError(
        absl::StrCat("parameter '", key, "' must be a single number"));
  }
  return v->ResolveNumber(key, "", 0);
}

absl::StatusOr<bool> MergePlan::Bool(const std::string& key,
                                     bool fallback) const {
  MS_ASSIGN_OR_RETURN(const ParamValue* v, WholeMergeValue(key));
  if (v == nullptr) return fallback;
  return v->AsBool(key);
}

absl::StatusOr<std::string> MergePlan::String(
    const std::string& key, const std::string& fallback) const {
  MS_ASSIGN_OR_RETURN(const ParamValue* v, WholeMergeValue(key));
  if (v == nullptr) return fallback;
  return v->AsString(key);
}

absl::StatusOr<TensorView> MergePlan::Aux(int model, const std::string& kind,
                                          const std::string& name) const {
  const PlannedModel& m = models_[static_cast<size_t>(model)];
  auto it = m.aux.find(kind);
  if (it == m.aux.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("model '", m.ref, "' needs a '", kind,
                     "' parameter naming its ", kind, " checkpoint"));
  }
  const TensorInfo* info = it->second->Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("tensor '", name, "' is missing from the ", kind,
                     " checkpoint of model '", m.ref, "'"));
  }
  return it->second->View(*info);
}

absl::Status MergePlan::CheckInputsUnchanged() const {
  for (size_t i = 0; i < folders_.size(); ++i) {
    absl::Status s = folders_[i]->CheckUnchanged();
    if (!s.ok()) {
      return absl::Status(s.code(), absl::StrCat("model '", folder_refs_[i],
                                                 "': ", s.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status MergePlan::CheckTensorInputsUnchanged(
    const PlannedTensor& t) const {
  auto check = [](const TensorView& v, const std::string& ref) {
    if (v.file == nullptr) return absl::OkStatus();
    absl::Status s = v.file->CheckUnchanged();
    if (s.ok()) return s;
    return absl::Status(s.code(),
                        absl::StrCat("model '", ref, "': ", s.message()));
  };
  const std::string reference_ref =
      config_.base_model ? *config_.base_model : models_[0].ref;
  MS_RETURN_IF_ERROR(check(t.reference, reference_ref));
  if (t.base.data != nullptr) {
    MS_RETURN_IF_ERROR(check(t.base, *config_.base_model));
  }
  for (size_t i = 0; i < t.models.size(); ++i) {
    MS_RETURN_IF_ERROR(check(t.models[i], models_[i].ref));
  }
  return absl::OkStatus();
}

uint64_t MergePlan::input_bytes() const {
  uint64_t n = 0;
  for (const auto& f : folders_) n += f->total_bytes();
  return n;
}

}  // namespace mergeserve
