#include "mergeserve/jobs/sweep_runner.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "mergeserve/base/errors.h"
#include "mergeserve/base/log.h"
#include "mergeserve/base/secure_random.h"
#include "mergeserve/base/sha256.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/base/temp_tag.h"
#include "mergeserve/engine/executor.h"
#include "mergeserve/engine/method_registry.h"
#include "mergeserve/registry/storage_roots.h"

namespace mergeserve {
namespace fs = std::filesystem;
namespace {

double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t)
      .count();
}

}  // namespace

namespace {

// "weight@MODEL" axes set one model's weight.
bool IsWeightAxis(const std::string& parameter) {
  return parameter.rfind("weight@", 0) == 0;
}
std::string WeightedModel(const std::string& parameter) {
  return parameter.substr(sizeof("weight@") - 1);
}

// Whether an axis has more than one distinct value.
bool Varies(const SweepAxis& axis) {
  return std::set<double>(axis.values.begin(), axis.values.end()).size() > 1;
}

absl::StatusOr<size_t> CheckGrid(const MergeConfig& config,
                                 const SweepGrid& grid) {
  if (!config.modules.empty()) {
    return absl::InvalidArgumentError(
        "sweep: a config with modules: sets values per module; sweep one "
        "with models:");
  }
  size_t points = 1;
  for (const SweepAxis& axis : grid) {
    if (axis.values.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sweep: axis '", Abbreviate(axis.parameter), "' has no values"));
    }
    const bool weight = IsWeightAxis(axis.parameter);
    if (!weight && (!IsKnownParameter(axis.parameter) ||
                    IsPerModelOnlyParameter(axis.parameter))) {
      return absl::InvalidArgumentError(
          absl::StrCat("sweep: '", Abbreviate(axis.parameter),
                       "' is not a numeric merge parameter (or weight@MODEL)"));
    }
    if (weight) {
      const std::string model = WeightedModel(axis.parameter);
      bool found = false;
      for (const ModelEntry& m : config.models) found |= m.model == model;
      if (!found) {
        return absl::InvalidArgumentError(
            absl::StrCat("sweep: '", Abbreviate(axis.parameter),
                         "' names no model of the request"));
      }
    }
    for (double v : axis.values) {
      if (!std::isfinite(v)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "sweep: axis '", axis.parameter, "' has a non-finite value"));
      }
      // Every point's number, not only the first point's (which the
      // request's plan checks): a row merged in one pass plans only its
      // first point.
      MS_RETURN_IF_ERROR(CheckParameterRange(
          weight ? "weight" : axis.parameter, v,
          absl::StrCat(" (sweep axis '", Abbreviate(axis.parameter), "')")));
    }
    points *= axis.values.size();
    if (points > 10000) {
      return absl::InvalidArgumentError("sweep: more than 10000 points");
    }
  }
  return points;
}

// Every point is evaluated the same way; a task without a head or data
// fails the sweep before the first point.
EvalTarget TargetOf(const MergeRequest& request, const SweepOptions& options,
                    const std::string& scratch) {
  EvalTarget target;
  target.tenant = request.tenant;
  target.weights_dir = scratch;
  target.weights_check = StorageRoots::OwnedFileCheck(scratch);
  target.preferred_heads = ExpertsOf(request.config);
  target.merged_regex = MergedTensorsRegex(request.config);
  target.tasks = options.tasks;
  target.role = DatasetRole::kValidation;
  target.max_examples = options.max_examples;
  target.cancelled = options.cancelled;
  return target;
}

// The axes' values at point `index` (the last axis varies fastest) and the
// request's config with them set.
MergeConfig PointConfig(const MergeConfig& config, const SweepGrid& grid,
                        size_t index,
                        std::vector<std::pair<std::string, double>>* values) {
  MergeConfig c = config;
  size_t rest = index;
  values->assign(grid.size(), {});
  for (size_t k = grid.size(); k-- > 0;) {
    const SweepAxis& axis = grid[k];
    const double v = axis.values[rest % axis.values.size()];
    rest /= axis.values.size();
    (*values)[k] = {axis.parameter, v};
    if (IsWeightAxis(axis.parameter)) {
      for (ModelEntry& m : c.models) {
        if (m.model == WeightedModel(axis.parameter)) {
          m.parameters["weight"] = ParamValue::Number(v);
        }
      }
    } else {
      c.parameters[axis.parameter] = ParamValue::Number(v);
      // The swept global value must win over per-model overrides.
      for (ModelEntry& m : c.models) m.parameters.erase(axis.parameter);
    }
  }
  return c;
}

// The axis that varies fastest: the last with more than one value; -1 if
// none does.
int FastestAxis(const SweepGrid& grid) {
  int fastest = -1;
  for (size_t k = 0; k < grid.size(); ++k) {
    if (Varies(grid[k])) fastest = static_cast<int>(k);
  }
  return fastest;
}

// If config c is `head` with only `parameter` changed ("lambda", or
// "weight@MODEL": a number both set), the value c gives it. Compared as the
// configs the points merge (the value an axis sets may be overridden by an
// earlier axis of the same parameter).
std::optional<double> OnlyChange(const MergeConfig& head, MergeConfig c,
                                 const std::string& parameter) {
  std::optional<double> value;
  auto take = [&](ParamMap& from, const ParamMap& to,
                  const std::string& key) -> bool {
    auto it = from.find(key);
    auto h = to.find(key);
    if (it == from.end() || h == to.end() || !it->second.is_number()) {
      return false;
    }
    auto v = it->second.ResolveNumber(key, "", 0);
    if (!v.ok() || (value && *value != *v)) return false;
    value = *v;
    it->second = h->second;
    return true;
  };
  if (parameter == "lambda") {
    if (!take(c.parameters, head.parameters, "lambda")) return std::nullopt;
  } else {
    if (c.models.size() != head.models.size()) return std::nullopt;
    for (size_t i = 0; i < c.models.size(); ++i) {
      if (c.models[i].model != WeightedModel(parameter)) continue;
      if (!take(c.models[i].parameters, head.models[i].parameters, "weight")) {
        return std::nullopt;
      }
    }
  }
  if (!value || c.ToYaml() != head.ToYaml()) return std::nullopt;
  return value;
}

// A batch's point folders and the kept folders it took to overwrite;
// whatever is still there when the batch ends, however it ends, is removed
// (an evaluated point's folder has gone back to the pool by then).
struct ScratchFolders {
  std::vector<std::string> dirs;
  std::vector<std::string> recycled;
  ~ScratchFolders() {
    std::error_code ec;
    for (const std::string& d : dirs) fs::remove_all(d, ec);
    for (const std::string& d : recycled) fs::remove_all(d, ec);
  }
};

}  // namespace

CacheHint SweepCacheHint(const SweepGrid& grid) {
  std::vector<const SweepAxis*> varying;
  size_t points = 1;
  for (const SweepAxis& axis : grid) {
    if (Varies(axis)) varying.push_back(&axis);
    points *= axis.values.size();
  }
  if (varying.empty()) return CacheHint::kGuess;
  // The last axis varies fastest: λ there reuses each q for a row.
  if (varying.back()->parameter == "lambda") return CacheHint::kUpdate;
  bool trims = false;  // a number the trims (and so τ and q) depend on
  for (const SweepAxis* axis : varying) {
    const std::string& name = axis->parameter;
    if (IsWeightAxis(name)) continue;
    if (name == "density" || name == "gamma" || name == "epsilon") {
      trims = true;
    } else {
      // λ slower than another axis, or a number whose effect on q the
      // sweep does not know (some act after q: consensus_k): the guess.
      return CacheHint::kGuess;
    }
  }
  if (trims) return CacheHint::kNone;
  // Keeping τ costs the first point what rebuilding τ saves about 17 later
  // ones, on the benchmark model (10-point weight sweeps, Zen 4 VM: 1.7 s
  // more for the first point, most of it faulting in 0.6 GiB of fresh
  // memory; 0.10 s less for each later one). Shorter sweeps read the
  // experts again at every point.
  return points > kMinPointsToKeepTrimmed ? CacheHint::kTrimmed
                                          : CacheHint::kNone;
}

absl::StatusOr<SweepPlan> PlanSweep(JobManager& jobs,
                                    const MergeRequest& request,
                                    const SweepGrid& grid,
                                    const SweepOptions& options) {
  SweepPlan out;
  MS_ASSIGN_OR_RETURN(const size_t points, CheckGrid(request.config, grid));
  out.points = static_cast<int64_t>(points);
  // Validate the whole request (and its memory) before the first point.
  MS_ASSIGN_OR_RETURN(
      PlannedMerge planned,
      PlanMerge(request, *jobs.registry(), jobs.options().threads_per_job));
  TaskEvaluator evaluator(jobs.registry(), jobs.options().device);
  const EvalTarget target = TargetOf(request, options, "");
  MS_ASSIGN_OR_RETURN(auto heads, evaluator.Plan(target));
  std::vector<std::string> names;
  for (const auto& [task, head] : heads) names.push_back(head);
  MS_ASSIGN_OR_RETURN(
      int64_t eval_memory,
      EstimateEvaluationMemory(*jobs.registry(), request.tenant, names));
  // λ or one weight varying fastest: a row's points share the experts'
  // trimmed τ, and the method can write them all from one pass.
  const int fastest = FastestAxis(grid);
  if (fastest >= 0 && planned.runnable && !planned.data_aware &&
      planned.scratch_bytes == 0) {
    const SweepAxis& axis = grid[static_cast<size_t>(fastest)];
    const bool weights = IsWeightAxis(axis.parameter);
    if ((weights || axis.parameter == "lambda") &&
        CanWriteVariants(*planned.plan, Backend::kFused, weights)) {
      const int64_t fit =
          kFusedScratchBytes / std::max<int64_t>(planned.output_bytes, 1);
      out.fused_points = std::max<int64_t>(
          1, std::min({static_cast<int64_t>(axis.values.size()),
                       kMaxFusedPoints, fit}));
    }
  }
  out.memory = std::max(
      planned.memory +
          (out.fused_points - 1) *
              VariantMemory(*planned.plan, jobs.options().threads_per_job),
      eval_memory);
  MS_ASSIGN_OR_RETURN(std::string eval_lines, evaluator.DigestLines(target));
  out.digest =
      Sha256Hex(absl::StrCat("merge ", planned.digest, "\n", eval_lines));
  return out;
}

absl::StatusOr<SweepSummary> RunSweep(JobManager& jobs,
                                      const MergeRequest& request,
                                      const SweepGrid& grid,
                                      const SweepOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  const std::string data_dir = jobs.options().data_dir;
  const MergeConfig& config = request.config;
  MS_ASSIGN_OR_RETURN(const size_t points, CheckGrid(config, grid));
  MS_ASSIGN_OR_RETURN(std::string hex, SecureRandomHex(4));
  const std::string scratch =
      absl::StrCat(data_dir, "/scratch/sweep-", TempTag(), hex);
  TaskEvaluator evaluator(jobs.registry(), jobs.options().device);
  const EvalTarget target = TargetOf(request, options, scratch);
  MS_RETURN_IF_ERROR(evaluator.Plan(target).status());

  const CacheHint hint = SweepCacheHint(grid);
  const CacheStats cache_before = jobs.cache_stats();
  const int64_t stats_hits = jobs.stats_counters().hits;
  const int64_t stats_misses = jobs.stats_counters().misses;
  SweepSummary summary;
  auto take_best = [&summary](const SweepPoint& p) {
    if (summary.best_index < 0 ||
        p.mean_accuracy > summary.best.mean_accuracy) {
      summary.best_index = p.index;
      summary.best = p;
    }
  };
  const auto npoints = static_cast<int64_t>(points);
  // Rows of λ or of one weight may be merged a row per pass (PlanSweep
  // checked that the method can; the grid is checked again here).
  const int fastest = FastestAxis(grid);
  const std::string row_parameter =
      fastest >= 0 ? grid[static_cast<size_t>(fastest)].parameter : "";
  const bool fusable =
      options.fused_points > 1 &&
      (row_parameter == "lambda" || IsWeightAxis(row_parameter));
  for (size_t index = 0; index < points;) {
    if (options.cancelled && options.cancelled->load()) {
      return absl::CancelledError("sweep cancelled");
    }
    auto finished = options.done.find(static_cast<int>(index));
    if (finished != options.done.end()) {
      // Logged by an earlier run: its numbers stand.
      take_best(finished->second);
      ++index;
      continue;
    }
    // This point and the next ones of its row (the fastest axis's values)
    // that are still to run, merged in one pass: configs that differ from
    // this point's only in that number.
    std::vector<size_t> batch = {index};
    std::vector<SweepPoint> fused(1);
    std::vector<MergeConfig> configs;
    std::vector<double> row_values(1);
    fused[0].index = static_cast<int>(index);
    configs.push_back(PointConfig(config, grid, index, &fused[0].values));
    auto in_row = [&](size_t j, SweepPoint* p, MergeConfig* c) {
      *c = PointConfig(config, grid, j, &p->values);
      return OnlyChange(configs.front(), *c, row_parameter);
    };
    while (fusable &&
           static_cast<int64_t>(batch.size()) < options.fused_points &&
           batch.back() + 1 < points &&
           options.done.count(static_cast<int>(batch.back() + 1)) == 0) {
      SweepPoint p;
      MergeConfig c;
      const std::optional<double> v = in_row(batch.back() + 1, &p, &c);
      if (!v) break;
      batch.push_back(batch.back() + 1);
      p.index = static_cast<int>(batch.back());
      fused.push_back(std::move(p));
      configs.push_back(std::move(c));
      row_values.push_back(*v);
    }
    if (options.on_phase) {
      options.on_phase(
          batch.size() == 1
              ? absl::StrCat("point ", index, ": merge")
              : absl::StrCat("points ", index, "-", batch.back(), ": merge"),
          static_cast<int64_t>(index), npoints);
    }
    auto t0 = std::chrono::steady_clock::now();
    MS_ASSIGN_OR_RETURN(
        PreparedMerge prepared,
        jobs.Prepare(
            request.tenant, configs.front(), options.cancelled,
            [&](const std::string& phase, int64_t done, int64_t total) {
              if (options.on_phase && done == total) {
                options.on_phase(absl::StrCat(phase, " done"),
                                 static_cast<int64_t>(index), npoints);
              }
            },
            /*measure_interference=*/false));
    if (!prepared.plain) batch.resize(1);  // a data-aware step per point
    ScratchFolders folders;
    for (size_t b = 0; b < batch.size(); ++b) {
      folders.dirs.push_back(absl::StrCat(scratch, "-", batch[b]));
      folders.recycled.push_back(jobs.scratch_pool()->Take());
    }
    // What this batch does not take would only add to its scratch.
    jobs.scratch_pool()->Shrink(0);
    MergeOptions mo;
    mo.output_dir = folders.dirs.front();
    mo.recycle_dir = folders.recycled.front();
    mo.overwrite = true;
    mo.threads = jobs.options().threads_per_job;
    mo.resolver = prepared.resolver;
    mo.digest = prepared.digest;
    mo.cache = jobs.cache();
    mo.cache_hint = hint;
    // A batch of λ points keeps no q for the row's next batch, which merges
    // again from the experts (their selections cached) instead: keeping q
    // cost the first batch a fresh 0.66 GiB on the benchmark model, more
    // than the next batch's merge with ElectAndMerge (other hints keep τ,
    // which later rows still read).
    if (batch.size() > 1 && hint == CacheHint::kUpdate) {
      mo.cache_hint = CacheHint::kNone;
    }
    for (size_t b = 1; b < batch.size(); ++b) {
      // A plain request runs as it came: each point's own config.
      MergeOptions::Variant v;
      v.output_dir = folders.dirs[b];
      v.recycle_dir = folders.recycled[b];
      v.config_text = configs[b].ToYaml();
      if (IsWeightAxis(row_parameter)) {
        v.weights[WeightedModel(row_parameter)] = row_values[b];
      } else {
        v.lambda = row_values[b];
      }
      mo.variants.push_back(std::move(v));
    }
    mo.cancelled = options.cancelled;
    mo.reject_non_finite = true;
    // The points are evaluated and removed: syncing them would make every
    // point wait for the disk.
    mo.durable = false;
    MS_RETURN_IF_ERROR(RunMerge(prepared.config, mo).status());
    // One pass merged them all: each point is charged its share.
    const double merge_seconds = Since(t0) / static_cast<double>(batch.size());
    for (size_t b = 0; b < batch.size(); ++b) {
      SweepPoint& point = fused[b];
      point.merge_seconds = merge_seconds;
      if (options.on_phase) {
        options.on_phase(absl::StrCat("point ", point.index, ": evaluate"),
                         static_cast<int64_t>(batch[b]), npoints);
      }
      t0 = std::chrono::steady_clock::now();
      EvalTarget at = target;
      at.weights_dir = folders.dirs[b];
      at.weights_check = StorageRoots::OwnedFileCheck(folders.dirs[b]);
      MS_ASSIGN_OR_RETURN(point.tasks, evaluator.Run(at));
      point.eval_seconds = Since(t0);
      // Kept for a later point to overwrite (its pages stay cached).
      jobs.scratch_pool()->Keep(folders.dirs[b]);
      point.mean_accuracy = MeanAccuracy(point.tasks);
      take_best(point);
      if (options.on_point) MS_RETURN_IF_ERROR(options.on_point(point));
    }
    index = batch.back() + 1;
  }
  const CacheStats cache_after = jobs.cache_stats();
  summary.trim_cache_hits = cache_after.hits - cache_before.hits;
  summary.trim_cache_misses = cache_after.misses - cache_before.misses;
  summary.stats_hits = jobs.stats_counters().hits - stats_hits;
  summary.stats_misses = jobs.stats_counters().misses - stats_misses;
  summary.seconds = Since(start);
  LogEvent("sweep_finished",
           {{"method", config.merge_method},
            {"points", std::to_string(points)},
            {"best", std::to_string(summary.best_index)},
            {"seconds", absl::StrFormat("%.3f", summary.seconds)}});
  return summary;
}

}  // namespace mergeserve
