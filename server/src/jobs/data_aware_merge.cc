#include "mergeserve/jobs/data_aware_merge.h"

#include <filesystem>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "mergeserve/base/log.h"
#include "mergeserve/base/sha256.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/base/temp_tag.h"
#include "mergeserve/engine/executor.h"
#include "mergeserve/engine/method_registry.h"
#include "mergeserve/eval/fisher_estimator.h"
#include "mergeserve/eval/gram_estimator.h"

namespace mergeserve {
namespace fs = std::filesystem;
namespace {

constexpr char kStatsPrefix[] = "stats:";

enum class Need { kNone, kFisher, kGram, kRi };

Need NeedOf(const MergeConfig& c) {
  if (c.merge_method == "ri") return Need::kRi;
  const char* key = c.merge_method == "fisher"    ? "fisher"
                    : c.merge_method == "regmean" ? "gram"
                                                  : nullptr;
  if (key == nullptr) return Need::kNone;
  // Computed only when no model brings its own statistics.
  for (const ModelEntry& m : c.models) {
    if (m.parameters.count(key)) return Need::kNone;
  }
  return c.merge_method == "fisher" ? Need::kFisher : Need::kGram;
}

absl::StatusOr<double> Number(const MergeConfig& c, const std::string& key,
                              double fallback) {
  auto it = c.parameters.find(key);
  if (it == c.parameters.end()) return fallback;
  return it->second.ResolveNumber(key, "", 0);
}

absl::StatusOr<std::string> String(const MergeConfig& c, const std::string& key,
                                   const std::string& fallback) {
  auto it = c.parameters.find(key);
  if (it == c.parameters.end()) return fallback;
  return it->second.AsString(key);
}

// Which dataset each step reads: Fisher and Grams the task's statistics
// split (fisher, else auxiliary), RI the unlabeled auxiliary inputs.
// The empirical Fisher needs labels; the other statistics do not.
bool NeedsLabels(const MergeConfig& c) {
  auto it = c.parameters.find("fisher_mode");
  if (it == c.parameters.end()) return false;
  auto mode = it->second.AsString("fisher_mode");
  return mode.ok() && *mode == "empirical";
}

absl::StatusOr<DatasetRecord> DatasetFor(Need need, const TaskBinding& b,
                                         bool need_labels) {
  const char* what = need == Need::kFisher ? "fisher"
                     : need == Need::kGram ? "regmean"
                                           : "ri";
  if (b.program.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, ": expert '", b.checkpoint,
        "' has no program; register it with --program FILE.pt --task TASK"));
  }
  if (b.task.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, ": expert '", b.checkpoint, "' has no task (register --task)"));
  }
  std::vector<DatasetRole> roles;
  if (need == Need::kFisher) roles = {DatasetRole::kFisher};
  if (need == Need::kGram)
    roles = {DatasetRole::kFisher, DatasetRole::kAuxiliary};
  if (need == Need::kRi) roles = {DatasetRole::kAuxiliary};
  for (DatasetRole r : roles) {
    auto it = b.datasets.find(r);
    if (it != b.datasets.end()) {
      if (need_labels && !it->second.has_labels) {
        return absl::FailedPreconditionError(
            absl::StrCat("the empirical Fisher needs labels, and dataset '",
                         it->second.name, "' of task '", b.task, "' has none"));
      }
      return it->second;
    }
  }
  return absl::FailedPreconditionError(
      absl::StrCat(what, ": task '", b.task, "' of expert '", b.checkpoint,
                   "' has no dataset with role ", DatasetRoleName(roles[0]),
                   "; register one with mergectl dataset NAME FILE --task ",
                   b.task, " --role ", DatasetRoleName(roles[0])));
}

absl::StatusOr<std::string> InnerMethod(const MergeConfig& c) {
  MS_ASSIGN_OR_RETURN(std::string inner, String(c, "ri_method", "ties"));
  if (inner == "ri" || FindMethod(inner) == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ri: ri_method '", inner, "' is not a merge method to run after it"));
  }
  if (!c.base_model) {
    return absl::InvalidArgumentError("ri: needs a base_model");
  }
  return inner;
}

// Runs `compute` into a fresh folder and renames it to stats_dir/key, unless
// that already exists (a cache hit).
absl::Status Cached(
    const DataAwareOptions& o, const std::string& key,
    const std::function<absl::Status(const std::string&)>& compute) {
  const std::string dir = o.stats_dir + "/" + key;
  std::error_code ec;
  if (fs::is_directory(dir, ec)) {
    if (o.counters) ++o.counters->hits;
    return absl::OkStatus();
  }
  if (o.counters) ++o.counters->misses;
  std::random_device rd;
  const std::string tmp =
      absl::StrFormat("%s.tmp-%s%08x", dir, TempTag(), rd());
  fs::create_directories(o.stats_dir, ec);
  absl::Status s = compute(tmp);
  if (s.ok()) {
    fs::rename(tmp, dir, ec);
    if (ec && !fs::is_directory(dir)) {
      s = absl::InternalError(
          absl::StrCat("cannot store statistics: ", ec.message()));
    }
  }
  fs::remove_all(tmp, ec);
  return s;
}

}  // namespace

std::vector<std::string> ExpertsOf(const MergeConfig& c) {
  std::vector<std::string> out;
  for (const ModelEntry& m : c.models) {
    if (!c.base_model || m.model != *c.base_model) out.push_back(m.model);
  }
  return out;
}

bool IsDataAware(const MergeConfig& config) {
  return NeedOf(config) != Need::kNone;
}

absl::StatusOr<MergeConfig> DataAwarePlanningConfig(
    const MergeConfig& config, const CheckpointRegistry& registry,
    const std::string& tenant) {
  const Need need = NeedOf(config);
  if (need == Need::kNone) return config;
  MergeConfig stand_in = config;
  if (need == Need::kRi) {
    MS_ASSIGN_OR_RETURN(stand_in.merge_method, InnerMethod(config));
  }
  for (ModelEntry& m : stand_in.models) {
    if (config.base_model && m.model == *config.base_model) continue;
    MS_ASSIGN_OR_RETURN(TaskBinding b, registry.Binding(tenant, m.model));
    MS_RETURN_IF_ERROR(
        DatasetFor(need, b, need == Need::kFisher && NeedsLabels(config))
            .status());
    // The expert's own folder has the Fisher's tensor names; enough to plan.
    if (need == Need::kFisher) {
      m.parameters["fisher"] = ParamValue::String(m.model);
    }
    if (need == Need::kGram) m.parameters["gram"] = ParamValue::String(m.model);
  }
  if (need == Need::kFisher) {
    MS_ASSIGN_OR_RETURN(std::string mode,
                        String(config, "fisher_mode", "exact"));
    MS_RETURN_IF_ERROR(FisherModeFromName(mode).status());
  }
  return stand_in;
}

absl::StatusOr<std::string> DataAwareDigestLines(
    const MergeConfig& config, const CheckpointRegistry& registry,
    const std::string& tenant) {
  const Need need = NeedOf(config);
  if (need == Need::kNone) return std::string();
  std::string lines;
  for (const std::string& e : ExpertsOf(config)) {
    MS_ASSIGN_OR_RETURN(TaskBinding b, registry.Binding(tenant, e));
    MS_ASSIGN_OR_RETURN(DatasetRecord d, DatasetFor(need, b, false));
    absl::StrAppend(&lines, e, " program ", b.program_digest, " data ",
                    d.content_digest, "\n");
  }
  return lines;
}

absl::StatusOr<PreparedMerge> PrepareDataAware(const MergeConfig& config,
                                               const DataAwareOptions& o) {
  const CheckpointRegistry* registry = o.registry;
  PreparedMerge p;
  p.config = config;
  const std::string tenant = o.tenant;
  const ModelResolver names = registry->Resolver(tenant);
  const std::string stats_dir = o.stats_dir;
  p.resolver = [names, stats_dir](
                   const std::string& ref) -> absl::StatusOr<ModelLocation> {
    if (absl::StartsWith(ref, kStatsPrefix)) {
      const std::string dir =
          stats_dir + "/" + ref.substr(sizeof(kStatsPrefix) - 1);
      return ModelLocation(dir, StorageRoots::OwnedFileCheck(dir));
    }
    return names(ref);
  };
  // Digests key the task-vector cache and the statistics; they carry the
  // tenant, so neither ever answers one tenant with another's results.
  p.digest = [registry, tenant](const std::string& ref) -> std::string {
    if (absl::StartsWith(ref, kStatsPrefix)) return ref;
    auto c = registry->Get(tenant, ref, false);
    return c.ok() ? absl::StrCat(tenant, "/", c->content_digest)
                  : std::string();
  };
  const Need need = NeedOf(config);
  if (need == Need::kNone) {
    p.plain = true;
    return p;
  }
  auto cancelled = [&] { return o.cancelled && o.cancelled->load(); };

  // Settings, with defaults sized for a quick first merge.
  MS_ASSIGN_OR_RETURN(const double examples, Number(config, "examples", 256));
  MS_ASSIGN_OR_RETURN(const double batch, Number(config, "batch_size", 128));
  MS_ASSIGN_OR_RETURN(const double seed, Number(config, "seed", 0));
  if (examples < 0 || batch < 1) {
    return absl::InvalidArgumentError(
        "examples must be >= 0 (0: all) and batch_size >= 1");
  }
  std::vector<std::string> experts = ExpertsOf(config);
  std::vector<TaskBinding> bindings;
  std::vector<DatasetRecord> data;
  std::vector<std::string> folders;
  for (const std::string& e : experts) {
    MS_ASSIGN_OR_RETURN(TaskBinding b, registry->Binding(tenant, e));
    MS_ASSIGN_OR_RETURN(
        DatasetRecord d,
        DatasetFor(need, b, need == Need::kFisher && NeedsLabels(config)));
    // The statistics read the folder through LibTorch: vet its files (by
    // real path) against the storage rules first.
    MS_RETURN_IF_ERROR(ModelFolder::Open(b.path, b.check).status());
    folders.push_back(b.path);
    bindings.push_back(b);
    data.push_back(d);
  }

  if (need == Need::kFisher || need == Need::kGram) {
    MS_ASSIGN_OR_RETURN(std::string mode_name,
                        String(config, "fisher_mode", "exact"));
    MS_ASSIGN_OR_RETURN(FisherMode mode, FisherModeFromName(mode_name));
    const std::string kind = need == Need::kFisher ? "fisher" : "gram";
    std::map<std::string, std::string> stats;  // expert -> stats ref
    for (size_t i = 0; i < experts.size(); ++i) {
      if (cancelled()) return absl::CancelledError("merge cancelled");
      const std::string settings =
          need == Need::kFisher
              ? absl::StrCat(mode_name, " n=", examples, " seed=", seed)
              : absl::StrCat("n=", examples);
      const std::string key = Sha256Hex(absl::StrCat(
          kind, "\n", p.digest(experts[i]), "\n", bindings[i].program_digest,
          "\n", data[i].content_digest, "\n", settings));
      const std::string phase = kind + " " + experts[i];
      MS_RETURN_IF_ERROR(Cached(o, key, [&](const std::string& out) {
        LogEvent(
            "statistics_computing",
            {{"kind", kind}, {"model", experts[i]}, {"dataset", data[i].name}});
        auto progress = [&](int64_t done, int64_t total) {
          if (o.progress) o.progress(phase, done, total);
        };
        if (need == Need::kFisher) {
          FisherOptions fo;
          fo.mode = mode;
          fo.max_examples = static_cast<int64_t>(examples);
          fo.seed = static_cast<uint64_t>(seed);
          fo.device = o.device;
          fo.progress = progress;
          return EstimateFisher(bindings[i].program, folders[i], data[i].path,
                                out, fo)
              .status();
        }
        GramOptions go;
        go.max_examples = static_cast<int64_t>(examples);
        go.batch_size = static_cast<int64_t>(batch);
        go.device = o.device;
        go.progress = progress;
        return EstimateGrams(bindings[i].program, folders[i], data[i].path, out,
                             go)
            .status();
      }));
      stats[experts[i]] = kStatsPrefix + key;
    }
    for (ModelEntry& m : p.config.models) {
      auto it = stats.find(m.model);
      if (it != stats.end())
        m.parameters[kind] = ParamValue::String(it->second);
    }
    return p;
  }

  // RI: adapt every expert, then merge the adapted ones with ri_method.
  MS_ASSIGN_OR_RETURN(std::string inner, InnerMethod(config));
  RiOptions ro;
  MS_ASSIGN_OR_RETURN(const double steps, Number(config, "steps", ro.steps));
  MS_ASSIGN_OR_RETURN(ro.lr, Number(config, "lr", ro.lr));
  MS_ASSIGN_OR_RETURN(ro.weight_decay,
                      Number(config, "weight_decay", ro.weight_decay));
  MS_ASSIGN_OR_RETURN(ro.alpha, Number(config, "alpha", ro.alpha));
  ro.steps = static_cast<int64_t>(steps);
  ro.batch_size = static_cast<int64_t>(batch);
  ro.seed = static_cast<uint64_t>(seed);
  ro.device = o.device;
  std::vector<RiExpert> ri_experts;
  std::string key_text = absl::StrFormat(
      "ri\nbase %s\nsteps=%d lr=%.17g wd=%.17g alpha=%.17g batch=%d seed=%d\n",
      p.digest(*config.base_model), ro.steps, ro.lr, ro.weight_decay, ro.alpha,
      ro.batch_size, static_cast<int64_t>(seed));
  for (size_t i = 0; i < experts.size(); ++i) {
    ri_experts.push_back({bindings[i].program, folders[i], data[i].path});
    absl::StrAppend(&key_text, p.digest(experts[i]), " ",
                    bindings[i].program_digest, " ", data[i].content_digest,
                    "\n");
  }
  const std::string key = Sha256Hex(key_text);
  // The adapter (every program, and the reference outputs on the pool) is
  // built only to adapt an expert not in the cache or to measure ξ; a sweep
  // over cached adaptations skips it.
  bool all_cached = true;
  for (size_t i = 0; i < experts.size(); ++i) {
    std::error_code ec;
    all_cached &=
        fs::is_directory(absl::StrCat(o.stats_dir, "/", key, "-", i), ec);
  }
  if (!all_cached || o.measure_interference) {
    MS_ASSIGN_OR_RETURN(ModelLocation base, names(*config.base_model));
    MS_RETURN_IF_ERROR(ModelFolder::Open(base.path, base.check).status());
    MS_ASSIGN_OR_RETURN(p.ri, RiAdapter::Create(base.path, ri_experts, ro));
  }
  std::map<std::string, std::string> adapted;
  for (size_t i = 0; i < experts.size(); ++i) {
    if (cancelled()) return absl::CancelledError("merge cancelled");
    const std::string k = absl::StrCat(key, "-", i);
    const std::string phase = "ri " + experts[i];
    MS_RETURN_IF_ERROR(Cached(o, k, [&](const std::string& out) {
      auto a = p.ri->Adapt(static_cast<int>(i), out,
                           [&](int64_t done, int64_t total) {
                             if (o.progress) o.progress(phase, done, total);
                           });
      if (!a.ok()) return a.status();
      LogEvent("ri_adapted",
               {{"model", experts[i]},
                {"loss_before", absl::StrFormat("%.6f", a->loss_before)},
                {"loss_after", absl::StrFormat("%.6f", a->loss_after)}});
      return absl::OkStatus();
    }));
    adapted[experts[i]] = kStatsPrefix + k;
  }
  p.config.merge_method = inner;
  if (!o.measure_interference) {
    p.ri.reset();  // nothing to measure after the merge either
  } else {
    // ξ before: the same merge of the unadapted experts, in a scratch folder.
    MergeConfig plain = config;
    plain.merge_method = inner;
    MergeOptions mo;
    std::random_device rd;
    mo.output_dir =
        absl::StrFormat("%s/scratch-%s%08x", o.stats_dir, TempTag(), rd());
    mo.overwrite = true;
    mo.resolver = p.resolver;
    mo.cancelled = o.cancelled;
    mo.threads = o.threads;
    mo.durable = false;  // measured and removed
    auto merged = RunMerge(plain, mo);
    if (merged.ok()) {
      auto xi = p.ri->Interference(mo.output_dir);
      if (xi.ok()) p.metrics["ri.interference_before"] = *xi;
    }
    std::error_code ec;
    fs::remove_all(mo.output_dir, ec);
    MS_RETURN_IF_ERROR(merged.status());
  }
  for (ModelEntry& m : p.config.models) {
    auto it = adapted.find(m.model);
    if (it != adapted.end()) m.model = it->second;
  }
  return p;
}

}  // namespace mergeserve
