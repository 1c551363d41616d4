#include "mergeserve/engine/executor.h"

#include <sys/resource.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "engine/engine_aten.h"
#include "engine/writer_sink.h"
#include "mergeserve/base/byte_size.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/engine/hub_cache.h"
#include "mergeserve/engine/magnitude_selector.h"
#include "mergeserve/engine/method_registry.h"
#include "mergeserve/engine/tokenizer_merge.h"
#include "mergeserve/format/model_folder.h"
#include "mergeserve/format/safetensors_writer.h"
#include "nlohmann/json.hpp"

namespace mergeserve {
namespace fs = std::filesystem;
namespace {

// Takes merged values and drops them (dry runs).
class DiscardSink : public TensorSink {
 public:
  absl::Status WriteF32(int64_t, const float*, int64_t) override {
    return absl::OkStatus();
  }
};

// Files of a tokenizer that a merged tokenizer.json replaces: the slow
// tokenizers' vocabularies would disagree with it.
bool IsSlowTokenizerFile(const std::string& name) {
  return name == "tokenizer.model" || name == "vocab.json" ||
         name == "merges.txt" || name == "added_tokens.json" ||
         name == "vocab.txt";
}

// The model card mergekit writes (card.py): what was merged, how, and the
// config, with the Hub ids as base_model metadata. Titled by the stage's
// name, not (as mergekit does) by the output folder's, so a merge gives the
// same bytes wherever it is written: a server's result and a one-shot
// merge compare equal.
std::string ModelCard(const MergePlan& plan, const std::string& config_yaml) {
  const MergeConfig& c = plan.config();
  std::vector<std::string> refs;
  if (c.base_model) refs.push_back(*c.base_model);
  for (const PlannedModel& m : plan.models()) {
    if (std::find(refs.begin(), refs.end(), m.ref) == refs.end()) {
      refs.push_back(m.ref);
    }
  }
  // mergekit lists each Hub model and adapter by id, without revision.
  std::vector<std::string> ids;
  for (const std::string& r : refs) {
    const size_t plus = r.find('+');
    for (std::string part :
         {r.substr(0, plus),
          plus == std::string::npos ? std::string() : r.substr(plus + 1)}) {
      if (!LooksLikeHubId(part)) continue;
      part = part.substr(0, part.find('@'));
      if (std::find(ids.begin(), ids.end(), part) == ids.end()) {
        ids.push_back(part);
      }
    }
  }
  std::string hub;
  for (const std::string& id : ids) absl::StrAppend(&hub, "- ", id, "\n");
  // slerp's base is one of its two endpoints, listed with the others.
  const bool base_apart = c.base_model && c.merge_method != "slerp";
  std::string out = absl::StrCat(
      "---\nbase_model:", hub.empty() ? " []\n" : "\n", hub,
      "library_name: transformers\ntags:\n- mergeserve\n- merge\n---\n# ",
      plan.config().name ? *plan.config().name : "Merged model",
      "\n\nThis is a merge of pre-trained language models created with "
      "mergeserve.\n\n## Merge Details\n### Merge Method\n\nThis model was "
      "merged using the ",
      c.merge_method, " merge method",
      base_apart ? absl::StrCat(" using ", *c.base_model, " as a base") : "",
      ".\n\n### Models Merged\n\nThe following models were included in the "
      "merge:\n");
  for (const std::string& r : refs) {
    if (base_apart && r == *c.base_model) continue;
    absl::StrAppend(&out, "* ", r, "\n");
  }
  absl::StrAppend(&out,
                  "\n### Configuration\n\nThe following YAML configuration "
                  "was used to produce this model:\n\n```yaml\n",
                  config_yaml, "```\n");
  return out;
}

// Copies config.json (with torch_dtype, vocab_size and stacked layers
// updated) and tokenizer files from the reference model's folder, through
// its file check like the weights; a tokenizer merge writes its own
// tokenizer files. Adds the model card and the config.
absl::Status CopySideFiles(const MergePlan& plan, ShardedWriter& writer,
                           const MergeConfig& config,
                           const std::string& config_text) {
  const ModelFolder& ref = plan.reference();
  auto cfg = ref.ReadSideFile("config.json");
  if (cfg.ok()) {
    std::string text = *cfg;
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (!j.is_discarded() && j.is_object()) {
      std::optional<DType> out =
          config.out_dtype ? config.out_dtype : config.dtype;
      if (out) j["torch_dtype"] = std::string(TorchDTypeName(*out));
      if (plan.stacked_layers() > 0) {
        // The architecture's own key (GPT-2: n_layer).
        bool set = false;
        for (const char* key : {"num_hidden_layers", "n_layer", "num_layers"}) {
          if (j.contains(key)) {
            j[key] = plan.stacked_layers();
            set = true;
          }
        }
        if (!set) j["num_hidden_layers"] = plan.stacked_layers();
      }
      if (plan.vocab_size() > 0) {
        if (j.contains("text_config") && j["text_config"].is_object() &&
            !j.contains("vocab_size")) {
          j["text_config"]["vocab_size"] = plan.vocab_size();
        } else {
          j["vocab_size"] = plan.vocab_size();
        }
      }
      text = j.dump(2) + "\n";
    }
    MS_RETURN_IF_ERROR(writer.AddFile("config.json", text));
  } else if (!absl::IsNotFound(cfg.status())) {
    return cfg.status();
  }
  const TokenizerMerge* tm = plan.tokenizer();
  const ModelFolder& tokenizer_from = tm ? tm->source_folder() : ref;
  const std::string& chat = plan.chat_template();
  if (tm) {
    MS_RETURN_IF_ERROR(writer.AddFile("tokenizer.json", tm->TokenizerJson()));
    MS_RETURN_IF_ERROR(
        writer.AddFile("tokenizer_config.json", tm->TokenizerConfigJson(chat)));
  }
  for (const std::string& name : ModelSideFiles()) {
    if (name == "config.json") continue;  // rewritten above
    if (tm && (name == "tokenizer.json" || name == "tokenizer_config.json" ||
               IsSlowTokenizerFile(name))) {
      continue;
    }
    const ModelFolder& from =
        name == "generation_config.json" ? ref : tokenizer_from;
    auto text = from.ReadSideFile(name);
    if (absl::IsNotFound(text.status())) continue;
    MS_RETURN_IF_ERROR(text.status());
    std::string contents = *text;
    if (!chat.empty() && name == "chat_template.jinja") contents = chat;
    if (!chat.empty() && !tm && name == "tokenizer_config.json") {
      auto j = nlohmann::json::parse(contents, nullptr, false);
      if (!j.is_discarded() && j.is_object()) {
        j["chat_template"] = chat;
        contents = j.dump(2) + "\n";
      }
    }
    MS_RETURN_IF_ERROR(writer.AddFile(name, contents));
  }
  // The request as a canonical document (as mergekit saves its config):
  // the same for the same merge however it was written or sent.
  const std::string yaml = config_text.empty() ? config.ToYaml() : config_text;
  MS_RETURN_IF_ERROR(writer.AddFile("mergeserve_config.yaml", yaml));
  return writer.AddFile("README.md", ModelCard(plan, yaml));
}

}  // namespace

int64_t PeakRssBytes() {
  // VmHWM, this address space's high-water mark. getrusage's ru_maxrss is
  // not: Linux carries it across execve from the address space the exec
  // replaced, which fork() copied from the parent, so a merge started by a
  // process holding 0.24 GiB (a Python benchmark that had imported torch)
  // reported 0.24 GiB however little it used itself.
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      const int64_t kb = std::atoll(line.c_str() + 6);  // "VmHWM:  1234 kB"
      if (kb > 0) return kb * 1024;
      break;
    }
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;
}

int64_t EstimateMergeMemory(const MergePlan& plan, Backend backend,
                            int threads) {
  const MethodInfo* info = FindMethod(plan.config().merge_method);
  const bool whole =
      backend == Backend::kAten || info == nullptr || !info->streams;
  int64_t chunk = ExecContext().chunk_elems;
  const int64_t workers = std::max(threads, 1);
  const int64_t models = static_cast<int64_t>(plan.models().size());
  int64_t largest = 0, chunks = 0, tensors = 0, row = 0, staged = 0;
  DType widest_out = DType::kBF16;
  for (const PlannedTensor& t : plan.tensors()) {
    ++tensors;
    if (!t.merge) continue;
    largest = std::max(largest, t.numel);
    if (DTypeSize(t.out_dtype) > DTypeSize(widest_out))
      widest_out = t.out_dtype;
    // Staged inputs (ForEachStagedChunk): the whole tensor up to the hold
    // limit, else one window.
    int64_t bytes =
        t.base.info != nullptr
            ? t.numel * static_cast<int64_t>(DTypeSize(t.base.info->dtype))
            : 0;
    for (const TensorView& v : t.models) {
      if (v.info != nullptr) {
        bytes += t.numel * static_cast<int64_t>(DTypeSize(v.info->dtype));
      }
    }
    staged = std::max(staged,
                      bytes <= static_cast<int64_t>(StagingArena::kHoldBytes)
                          ? bytes
                          : static_cast<int64_t>(StagingArena::kStagingBytes));
    chunks += (t.numel + chunk - 1) / chunk;
    row = std::max(row, t.row_length());
  }
  // Whole rows per chunk: a row longer than a chunk is one chunk.
  if (info != nullptr && info->row_chunks) chunk = std::max(chunk, row);
  // Always: the plan's tensor tables (names, shapes, views per model), the
  // writer's index, thread stacks and allocator slack.
  int64_t need = (int64_t{64} << 20) + tensors * (models + 2) * 256;
  if (whole) {
    // Every model's copy of the largest tensor in fp32 plus temporaries
    // (more for the matrix methods).
    need += WholeTensorBytes(info, models, largest);
  } else {
    // The staged inputs, rounded to huge pages per model.
    need += staged + (models + 1) * (int64_t{2} << 20);
    // Per worker: base, τ per model (twice with diagnostics), mask, random,
    // sums, output and its conversion buffer, one chunk each.
    // DELLA adds its per-row radix keys, indices and ranks.
    const int64_t ranks = info != nullptr && info->row_chunks ? 5 : 0;
    need += workers * (10 + 2 * models + ranks) * chunk * 4;
    // DARE's and DELLA's draws, one bit per element and model, of the
    // largest tensor.
    need += models * largest / 8;
    // Per model and chunk: keep sets of a whole-model trim (tie counts).
    need += models * chunks * 16;
    // The output regions the sink gathers chunks into.
    need += WriterSink::MemoryBound(static_cast<int>(workers), widest_out);
  }
  if (info != nullptr && info->selects) {
    need += MagnitudeSelector::MemoryBound(models, static_cast<int>(workers),
                                           chunks);
  }
  return need;
}

bool CanWriteVariants(const MergePlan& plan, Backend backend, bool weights) {
  auto m = CreateMethod(plan.config().merge_method);
  return m.ok() && (*m)->WritesVariants(plan, backend, weights);
}

int64_t VariantMemory(const MergePlan& plan, int threads) {
  DType widest_out = DType::kBF16;
  for (const PlannedTensor& t : plan.tensors()) {
    if (t.merge && DTypeSize(t.out_dtype) > DTypeSize(widest_out)) {
      widest_out = t.out_dtype;
    }
  }
  return WriterSink::MemoryBound(std::max(threads, 1), widest_out);
}

absl::StatusOr<MergeSummary> RunMerge(const MergeConfig& config,
                                      const MergeOptions& options) {
  ModelResolver resolver = options.resolver
                               ? options.resolver
                               : LocalPathResolver(config.source_dir);
  MS_RETURN_IF_ERROR(CreateMethod(config.merge_method).status());
  MS_ASSIGN_OR_RETURN(std::unique_ptr<MergePlan> plan,
                      MergePlan::Create(config, resolver));
  return RunMergePlan(std::move(plan), options);
}

absl::StatusOr<MergeSummary> RunMergePlan(std::unique_ptr<MergePlan> plan,
                                          const MergeOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  const MergeConfig& config = plan->config();
  MS_ASSIGN_OR_RETURN(std::unique_ptr<MergeMethod> method,
                      CreateMethod(config.merge_method));

  // Each variant's weight changes by plan model.
  const auto& variants = options.variants;
  std::vector<ExecContext::VariantOutput> changes(variants.size());
  bool weights = false;
  // The same folder twice (however spelled) would be written by two
  // writers.
  auto folder = [](const std::string& dir) {
    std::error_code ec;
    fs::path p = fs::absolute(dir, ec);
    if (ec) p = dir;
    p = p.lexically_normal();
    if (!p.has_filename()) p = p.parent_path();
    return p.string();
  };
  std::set<std::string> dirs = {folder(options.output_dir)};
  for (size_t v = 0; v < variants.size(); ++v) {
    if (!dirs.insert(folder(variants[v].output_dir)).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("merge variant: output folder '", variants[v].output_dir,
                       "' is written twice"));
    }
    changes[v].lambda = variants[v].lambda;
    for (const auto& [ref, w] : variants[v].weights) {
      bool found = false;
      for (size_t i = 0; i < plan->models().size(); ++i) {
        if (plan->models()[i].ref != ref) continue;
        changes[v].weights.push_back({static_cast<int>(i), w});
        found = true;
      }
      if (!found) {
        return absl::InvalidArgumentError(
            absl::StrCat("merge variant: the config has no model '", ref, "'"));
      }
      weights = true;
    }
  }
  if (!variants.empty() &&
      (options.dry_run || options.diagnostics != nullptr ||
       !method->WritesVariants(*plan, options.backend, weights))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "merge variants: ", config.merge_method,
        " cannot write them here (the task-vector methods can, on the fused "
        "backend, without dry_run or diagnostics; other weights not with "
        "zero_sign: majority)"));
  }

  ThreadPool pool(options.threads);
  // ATen methods loaded LibTorch's module when they were created; `backend:
  // aten` loads it here, before anything is written, so that a missing module
  // fails the merge up front and LibTorch runs on the pool's thread count.
  if (options.backend == Backend::kAten) {
    MS_RETURN_IF_ERROR(EngineAten("backend: aten").status());
  }
  if (const EngineAtenTable* aten = LoadedEngineAten()) {
    aten->set_num_threads(pool.num_threads());
  }
  StagingArena staging;
  ExecContext ctx;
  ctx.pool = &pool;
  ctx.staging = &staging;
  ctx.backend = options.backend;
  ctx.device = options.device;
  ctx.cancelled = options.cancelled;
  ctx.diagnostics = options.diagnostics;
  ctx.cache_hint = options.cache_hint;
  if (options.cache != nullptr && options.digest) {
    bool known = true;
    for (const PlannedModel& m : plan->models()) {
      ctx.model_digests.push_back(options.digest(m.ref));
      known = known && !ctx.model_digests.back().empty();
    }
    if (config.base_model) {
      ctx.base_digest = options.digest(*config.base_model);
      // A base without a digest (a stage's output) makes keys ambiguous.
      known = known && !ctx.base_digest.empty();
    }
    if (known) ctx.cache = options.cache;
  }

  MergeProgress progress;
  progress.tensors_total = static_cast<int64_t>(plan->tensors().size());
  progress.phase = "prepare";
  if (options.on_progress) options.on_progress(progress);
  if (!plan->tensors().empty()) {
    PrefetchInputs(plan->tensors().front(), StagingArena::kHoldBytes);
  }
  MS_RETURN_IF_ERROR(method->Prepare(*plan, ctx));

  std::vector<TensorSpec> specs;
  const bool whole_tensor = method->HoldsWholeTensors(ctx);
  for (const PlannedTensor& t : plan->tensors()) {
    specs.push_back({t.name, t.out_dtype, t.shape});
    progress.bytes_total += t.out_bytes();
    if (options.memory_budget > 0 && t.merge && whole_tensor) {
      // Whole-tensor paths hold every model's copy plus a few temporaries.
      const int64_t need =
          WholeTensorBytes(FindMethod(config.merge_method),
                           static_cast<int64_t>(t.models.size()), t.numel);
      if (need > options.memory_budget) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "tensor '", t.name, "' needs about ", FormatBytes(need), " for ",
            config.merge_method, " (whole-tensor path), over the ",
            FormatBytes(options.memory_budget), " memory budget"));
      }
    }
  }

  ShardedWriter::Options wo;
  wo.output_dir = options.output_dir;
  wo.max_shard_bytes = options.max_shard_bytes;
  wo.overwrite = options.overwrite;
  wo.digest_files = options.digest_outputs;
  wo.drop_cached = options.uncache_outputs;
  wo.durable = options.durable;
  wo.recycle_dir = options.recycle_dir;
  wo.metadata = {{"format", "pt"},
                 {"merged_by", "mergeserve"},
                 {"merge_method", config.merge_method}};
  std::unique_ptr<ShardedWriter> writer;
  // One writer per λ variant, laid out like the main output.
  std::vector<std::unique_ptr<ShardedWriter>> others;
  for (const MergeOptions::Variant& v : variants) {
    ShardedWriter::Options vo = wo;
    vo.output_dir = v.output_dir;
    vo.recycle_dir = v.recycle_dir;
    MS_ASSIGN_OR_RETURN(std::unique_ptr<ShardedWriter> w,
                        ShardedWriter::Create(vo, specs));
    others.push_back(std::move(w));
  }
  if (!options.dry_run) {
    MS_ASSIGN_OR_RETURN(writer, ShardedWriter::Create(wo, std::move(specs)));
  }
  DiscardSink discard;

  MergeSummary summary;
  summary.method = config.merge_method;
  summary.warnings = plan->warnings();
  summary.memory_estimate_bytes =
      EstimateMergeMemory(*plan, options.backend, pool.num_threads()) +
      static_cast<int64_t>(variants.size()) *
          VariantMemory(*plan, pool.num_threads());
  progress.phase = "merge";
  const auto& tensors = plan->tensors();
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (ctx.is_cancelled()) return absl::CancelledError("merge cancelled");
    const PlannedTensor& t = tensors[i];
    if (i + 1 < tensors.size()) {
      PrefetchInputs(tensors[i + 1], StagingArena::kHoldBytes);
    }
    if (t.merge) {
      absl::Status merged;
      if (writer) {
        WriterSink sink(*writer, i, t, options.reject_non_finite);
        std::vector<std::unique_ptr<WriterSink>> sinks;
        ctx.variant_outputs = changes;
        for (size_t v = 0; v < others.size(); ++v) {
          sinks.push_back(std::make_unique<WriterSink>(
              *others[v], i, t, options.reject_non_finite));
          ctx.variant_outputs[v].sink = sinks.back().get();
        }
        merged = method->MergeTensor(*plan, t, ctx, sink);
        ctx.variant_outputs.clear();
        if (merged.ok()) merged = sink.Finish();
        // A variant the method left unwritten fails here (INTERNAL).
        for (auto& s : sinks) {
          if (merged.ok()) merged = s->Finish();
        }
      } else {
        merged = method->MergeTensor(*plan, t, ctx, discard);
      }
      if (merged.code() == absl::StatusCode::kDataLoss) {
        // A staged read found a file shorter than at open: name the model.
        MS_RETURN_IF_ERROR(plan->CheckTensorInputsUnchanged(t));
      }
      MS_RETURN_IF_ERROR(merged);
      if (t.base.data) summary.bytes_read += t.base.info->nbytes;
      for (const TensorView& v : t.models) {
        if (v.data != nullptr) summary.bytes_read += v.info->nbytes;
      }
      ++summary.merged;
    } else if (writer) {
      MS_RETURN_IF_ERROR(
          writer->Write(i, 0, t.reference.data, t.reference.info->nbytes));
      for (auto& w : others) {
        MS_RETURN_IF_ERROR(
            w->Write(i, 0, t.reference.data, t.reference.info->nbytes));
      }
      summary.bytes_read += t.reference.info->nbytes;
      ++summary.copied;
    }
    // A checkpoint re-saved under the merge fails it (DATA_LOSS) rather
    // than committing a mix of old and new bytes.
    MS_RETURN_IF_ERROR(plan->CheckTensorInputsUnchanged(t));
    // Inputs of this tensor are consumed: keep RSS bounded.
    ReleaseView(t.reference);
    if (t.base.data) ReleaseView(t.base);
    for (const TensorView& v : t.models) ReleaseView(v);
    if (writer) writer->TensorDone(i);
    for (auto& w : others) w->TensorDone(i);
    summary.bytes_written += t.out_bytes();
    progress.tensors_done = static_cast<int64_t>(i + 1);
    progress.bytes_done += t.out_bytes();
    progress.tensor = t.name;
    if (options.on_progress) options.on_progress(progress);
  }
  if (writer) {
    MS_RETURN_IF_ERROR(
        CopySideFiles(*plan, *writer, config, options.config_text));
    MS_RETURN_IF_ERROR(plan->CheckInputsUnchanged());
    summary.shards = writer->num_shards();
    for (size_t v = 0; v < others.size(); ++v) {
      MS_RETURN_IF_ERROR(
          CopySideFiles(*plan, *others[v], config, variants[v].config_text));
    }
    if (options.before_commit) MS_RETURN_IF_ERROR(options.before_commit());
    // The variants first: a failed commit leaves no main result behind
    // that claims the pass succeeded.
    for (auto& w : others) MS_RETURN_IF_ERROR(w->Commit());
    MS_RETURN_IF_ERROR(writer->Commit());
    summary.output_dir = options.output_dir;
    summary.file_digests = writer->file_digests();
  }
  summary.tensors = static_cast<int64_t>(tensors.size());
  summary.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  summary.peak_rss_bytes = PeakRssBytes();
  return summary;
}

absl::Status WritePlanSketch(const MergePlan& plan, const std::string& dir) {
  std::vector<TensorSpec> specs;
  for (const PlannedTensor& t : plan.tensors()) {
    specs.push_back({t.name, t.out_dtype, t.shape});
  }
  ShardedWriter::Options wo;
  wo.output_dir = dir;
  wo.max_shard_bytes = ~uint64_t{0};
  wo.overwrite = true;
  wo.reserve = false;
  MS_ASSIGN_OR_RETURN(std::unique_ptr<ShardedWriter> writer,
                      ShardedWriter::Create(wo, std::move(specs)));
  MS_RETURN_IF_ERROR(CopySideFiles(plan, *writer, plan.config(), ""));
  return writer->Commit();
}

}  // namespace mergeserve
