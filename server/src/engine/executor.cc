#include "mergeserve/engine/executor.h"

#include <ATen/Parallel.h>
#include <sys/resource.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/byte_size.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/engine/method_registry.h"
#include "mergeserve/format/model_folder.h"
#include "mergeserve/format/safetensors_writer.h"
#include "nlohmann/json.hpp"

namespace mergeserve {
namespace fs = std::filesystem;
namespace {

class WriterSink : public TensorSink {
 public:
  WriterSink(ShardedWriter& writer, size_t index, DType dtype)
      : writer_(writer), index_(index), dtype_(dtype) {}
  absl::Status WriteF32(int64_t begin, const float* values,
                        int64_t count) override {
    thread_local std::vector<unsigned char> buf;
    const size_t es = DTypeSize(dtype_);
    buf.resize(static_cast<size_t>(count) * es);
    StoreFromF32(values, count, dtype_, buf.data());
    return writer_.Write(index_, static_cast<uint64_t>(begin) * es, buf.data(),
                         buf.size());
  }

 private:
  ShardedWriter& writer_;
  size_t index_;
  DType dtype_;
};

// Takes merged values and drops them (dry runs).
class DiscardSink : public TensorSink {
 public:
  absl::Status WriteF32(int64_t, const float*, int64_t) override {
    return absl::OkStatus();
  }
};

absl::StatusOr<std::string> ReadSmallFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", p.string()));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Copies config.json (with torch_dtype updated) and tokenizer files from the
// reference model's folder.
absl::Status CopySideFiles(const MergePlan& plan, ShardedWriter& writer,
                           const MergeConfig& config) {
  std::error_code ec;
  fs::path dir(plan.reference().path());
  if (!fs::is_directory(dir, ec)) return absl::OkStatus();
  const fs::path cfg = dir / "config.json";
  if (fs::exists(cfg, ec)) {
    MS_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(cfg));
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (!j.is_discarded() && j.is_object()) {
      std::optional<DType> out =
          config.out_dtype ? config.out_dtype : config.dtype;
      if (out) j["torch_dtype"] = std::string(TorchDTypeName(*out));
      text = j.dump(2) + "\n";
    }
    MS_RETURN_IF_ERROR(writer.AddFile("config.json", text));
  }
  for (const std::string& name : ModelSideFiles()) {
    if (name == "config.json") continue;  // rewritten above
    const fs::path p = dir / name;
    if (!fs::exists(p, ec)) continue;
    MS_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(p));
    MS_RETURN_IF_ERROR(writer.AddFile(name, text));
  }
  if (!config.source_text.empty()) {
    MS_RETURN_IF_ERROR(
        writer.AddFile("mergeserve_config.yaml", config.source_text));
  }
  return absl::OkStatus();
}

}  // namespace

int64_t PeakRssBytes() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;
}

int64_t EstimateMergeMemory(const MergePlan& plan, Backend backend,
                            int threads) {
  const MethodInfo* info = FindMethod(plan.config().merge_method);
  const bool whole =
      backend == Backend::kAten || info == nullptr || !info->streams;
  int64_t largest = 0;
  for (const PlannedTensor& t : plan.tensors()) {
    if (t.merge) largest = std::max(largest, t.numel);
  }
  const int64_t models = static_cast<int64_t>(plan.models().size()) + 1;
  if (whole) return (models + 4) * largest * 4;
  const int64_t chunk = ExecContext().chunk_elems;
  return std::max(threads, 1) * (models + 8) * chunk * 4;
}

absl::StatusOr<MergeSummary> RunMerge(const MergeConfig& config,
                                      const MergeOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  ModelResolver resolver = options.resolver
                               ? options.resolver
                               : LocalPathResolver(config.source_dir);
  MS_ASSIGN_OR_RETURN(std::unique_ptr<MergeMethod> method,
                      CreateMethod(config.merge_method));
  MS_ASSIGN_OR_RETURN(std::unique_ptr<MergePlan> plan,
                      MergePlan::Create(config, resolver));

  ThreadPool pool(options.threads);
  at::set_num_threads(pool.num_threads());
  ExecContext ctx;
  ctx.pool = &pool;
  ctx.backend = options.backend;
  ctx.device = options.device;
  ctx.cancelled = options.cancelled;
  ctx.diagnostics = options.diagnostics;
  if (options.cache != nullptr && options.digest) {
    bool known = true;
    for (const PlannedModel& m : plan->models()) {
      ctx.model_digests.push_back(options.digest(m.ref));
      known = known && !ctx.model_digests.back().empty();
    }
    if (config.base_model) ctx.base_digest = options.digest(*config.base_model);
    if (known) ctx.cache = options.cache;
  }

  MergeProgress progress;
  progress.tensors_total = static_cast<int64_t>(plan->tensors().size());
  progress.phase = "prepare";
  if (options.on_progress) options.on_progress(progress);
  MS_RETURN_IF_ERROR(method->Prepare(*plan, ctx));

  std::vector<TensorSpec> specs;
  const bool whole_tensor = method->HoldsWholeTensors(ctx);
  for (const PlannedTensor& t : plan->tensors()) {
    specs.push_back({t.name, t.out_dtype, t.shape});
    progress.bytes_total += t.out_bytes();
    if (options.memory_budget > 0 && t.merge && whole_tensor) {
      // Whole-tensor paths hold every model's copy plus a few temporaries.
      const int64_t need =
          static_cast<int64_t>(t.models.size() + 4) * t.numel * 4;
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
  wo.metadata = {{"format", "pt"},
                 {"merged_by", "mergeserve"},
                 {"merge_method", config.merge_method}};
  std::unique_ptr<ShardedWriter> writer;
  if (!options.dry_run) {
    MS_ASSIGN_OR_RETURN(writer, ShardedWriter::Create(wo, std::move(specs)));
  }
  DiscardSink discard;

  MergeSummary summary;
  summary.method = config.merge_method;
  progress.phase = "merge";
  const auto& tensors = plan->tensors();
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (ctx.is_cancelled()) return absl::CancelledError("merge cancelled");
    const PlannedTensor& t = tensors[i];
    if (t.merge) {
      if (writer) {
        WriterSink sink(*writer, i, t.out_dtype);
        MS_RETURN_IF_ERROR(method->MergeTensor(*plan, t, ctx, sink));
      } else {
        MS_RETURN_IF_ERROR(method->MergeTensor(*plan, t, ctx, discard));
      }
      if (t.base.data) summary.bytes_read += t.base.info->nbytes;
      for (const TensorView& v : t.models) summary.bytes_read += v.info->nbytes;
      ++summary.merged;
    } else if (writer) {
      MS_RETURN_IF_ERROR(
          writer->Write(i, 0, t.reference.data, t.reference.info->nbytes));
      summary.bytes_read += t.reference.info->nbytes;
      ++summary.copied;
    }
    // Inputs of this tensor are consumed: keep RSS bounded.
    ReleaseView(t.reference);
    if (t.base.data) ReleaseView(t.base);
    for (const TensorView& v : t.models) ReleaseView(v);
    summary.bytes_written += t.out_bytes();
    progress.tensors_done = static_cast<int64_t>(i + 1);
    progress.bytes_done += t.out_bytes();
    progress.tensor = t.name;
    if (options.on_progress) options.on_progress(progress);
  }
  if (writer) {
    MS_RETURN_IF_ERROR(CopySideFiles(*plan, *writer, config));
    summary.shards = writer->num_shards();
    MS_RETURN_IF_ERROR(writer->Commit());
    summary.output_dir = options.output_dir;
  }
  summary.tensors = static_cast<int64_t>(tensors.size());
  summary.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  summary.peak_rss_bytes = PeakRssBytes();
  return summary;
}

}  // namespace mergeserve
