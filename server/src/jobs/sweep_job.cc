#include "mergeserve/jobs/sweep_job.h"

#include "absl/strings/str_cat.h"
#include "mergeserve/base/sha256.h"
#include "mergeserve/base/status_macros.h"
#include "nlohmann/json.hpp"

namespace mergeserve {
namespace {

using Json = nlohmann::json;

SweepOptions OptionsOf(const SweepParams& p) {
  SweepOptions o;
  o.tasks = p.tasks;
  o.max_examples = p.max_examples;
  return o;
}

Json PointJson(const SweepPoint& p) {
  Json values = Json::array();
  for (const auto& [name, v] : p.values) values.push_back({name, v});
  Json tasks = Json::array();
  for (const TaskMetrics& m : p.tasks) tasks.push_back(TaskMetricsToJson(m));
  return {{"index", p.index},
          {"values", values},
          {"tasks", tasks},
          {"mean_accuracy", p.mean_accuracy},
          {"merge_seconds", p.merge_seconds},
          {"eval_seconds", p.eval_seconds}};
}

absl::StatusOr<SweepPoint> PointOf(const Json& j) {
  const auto bad = absl::DataLossError(
      "a sweep point in the job log is "
      "unreadable");
  if (!j.is_object() || !j.contains("index")) return bad;
  SweepPoint p;
  p.index = j.value("index", 0);
  for (const Json& v : j.value("values", Json::array())) {
    if (!v.is_array() || v.size() != 2 || !v[0].is_string() ||
        !v[1].is_number()) {
      return bad;
    }
    p.values.push_back({v[0].get<std::string>(), v[1].get<double>()});
  }
  for (const Json& t : j.value("tasks", Json::array())) {
    MS_ASSIGN_OR_RETURN(TaskMetrics m, TaskMetricsFromJson(t));
    p.tasks.push_back(std::move(m));
  }
  p.mean_accuracy = j.value("mean_accuracy", 0.0);
  p.merge_seconds = j.value("merge_seconds", 0.0);
  p.eval_seconds = j.value("eval_seconds", 0.0);
  return p;
}

absl::StatusOr<Json> Parse(const std::string& text, const char* what) {
  Json j = Json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::DataLossError(
        absl::StrCat("the stored ", what, " of a sweep job is unreadable"));
  }
  return j;
}

// The run of a planned sweep: points logged as they finish, resumed after
// those an earlier attempt logged.
PlannedWorkJob Planned(JobManager& jobs, MergeRequest request,
                       SweepParams params, const SweepPlan& plan) {
  PlannedWorkJob w;
  w.memory = plan.memory;
  w.run = [&jobs, request = std::move(request), params = std::move(params),
           fused = plan.fused_points](
              JobContext& ctx) -> absl::StatusOr<std::string> {
    SweepOptions o = OptionsOf(params);
    o.fused_points = fused;
    o.cancelled = ctx.cancelled;
    for (const JobLogEntry& e : ctx.earlier) {
      MS_ASSIGN_OR_RETURN(SweepPoint p, SweepPointFromJson(e.payload));
      o.done[p.index] = std::move(p);
    }
    o.on_phase = [&ctx](const std::string& phase, int64_t done, int64_t total) {
      ctx.progress(phase, done, total);
    };
    o.on_point = [&ctx](const SweepPoint& p) {
      return ctx.log(SweepPointToJson(p));
    };
    MS_ASSIGN_OR_RETURN(SweepSummary s,
                        RunSweep(jobs, request, params.grid, o));
    return SweepSummaryToJson(s);
  };
  return w;
}

}  // namespace

absl::StatusOr<JobRecord> SubmitSweep(JobManager& jobs, MergeRequest request,
                                      const SweepParams& params) {
  MS_ASSIGN_OR_RETURN(SweepPlan plan,
                      PlanSweep(jobs, request, params.grid, OptionsOf(params)));
  WorkJobRequest r;
  r.kind = kSweepJob;
  r.tenant = request.tenant;
  r.method = request.config.merge_method;
  r.config_yaml = request.config.ToYaml();
  r.params = SweepParamsToJson(params);
  // The merge's and evaluation's inputs (plan.digest) and the grid.
  r.digest = "sweep-" + Sha256Hex(absl::StrCat(plan.digest, "\n", r.params));
  r.planned = Planned(jobs, std::move(request), params, plan);
  return jobs.SubmitWorkJob(std::move(r));
}

absl::StatusOr<PlannedWorkJob> PlanSweepJob(JobManager& jobs,
                                            const JobRecord& job) {
  MS_ASSIGN_OR_RETURN(
      MergeConfig config,
      MergeConfig::FromYaml(job.config_yaml, jobs.options().data_dir));
  MS_ASSIGN_OR_RETURN(SweepParams params, SweepParamsFromJson(job.params));
  MergeRequest request{job.tenant, std::move(config), {}};
  // Planned again: the inputs may have changed since it was queued.
  MS_ASSIGN_OR_RETURN(SweepPlan plan,
                      PlanSweep(jobs, request, params.grid, OptionsOf(params)));
  return Planned(jobs, std::move(request), std::move(params), plan);
}

std::string SweepParamsToJson(const SweepParams& p) {
  Json grid = Json::array();
  for (const SweepAxis& a : p.grid) {
    grid.push_back({{"parameter", a.parameter}, {"values", a.values}});
  }
  return Json{
      {"grid", grid}, {"tasks", p.tasks}, {"max_examples", p.max_examples}}
      .dump();
}

absl::StatusOr<SweepParams> SweepParamsFromJson(const std::string& text) {
  MS_ASSIGN_OR_RETURN(Json j, Parse(text, "parameters"));
  SweepParams p;
  try {
    for (const Json& a : j.at("grid")) {
      p.grid.push_back({a.at("parameter").get<std::string>(),
                        a.at("values").get<std::vector<double>>()});
    }
    p.tasks = j.at("tasks").get<std::vector<std::string>>();
    p.max_examples = j.at("max_examples").get<int64_t>();
  } catch (const Json::exception&) {
    return absl::DataLossError(
        "the stored parameters of a sweep job are unreadable");
  }
  return p;
}

std::string SweepPointToJson(const SweepPoint& p) {
  return PointJson(p).dump();
}

absl::StatusOr<SweepPoint> SweepPointFromJson(const std::string& text) {
  MS_ASSIGN_OR_RETURN(Json j, Parse(text, "point"));
  return PointOf(j);
}

std::string SweepSummaryToJson(const SweepSummary& s) {
  return Json{{"best_index", s.best_index},
              {"best", PointJson(s.best)},
              {"seconds", s.seconds},
              {"trim_cache_hits", s.trim_cache_hits},
              {"trim_cache_misses", s.trim_cache_misses},
              {"stats_hits", s.stats_hits},
              {"stats_misses", s.stats_misses}}
      .dump();
}

absl::StatusOr<SweepSummary> SweepSummaryFromJson(const std::string& text) {
  MS_ASSIGN_OR_RETURN(Json j, Parse(text, "summary"));
  SweepSummary s;
  s.best_index = j.value("best_index", -1);
  if (j.contains("best")) {
    MS_ASSIGN_OR_RETURN(s.best, PointOf(j["best"]));
  }
  s.seconds = j.value("seconds", 0.0);
  s.trim_cache_hits = j.value("trim_cache_hits", int64_t{0});
  s.trim_cache_misses = j.value("trim_cache_misses", int64_t{0});
  s.stats_hits = j.value("stats_hits", int64_t{0});
  s.stats_misses = j.value("stats_misses", int64_t{0});
  return s;
}

}  // namespace mergeserve
