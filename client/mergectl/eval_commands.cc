// mergectl verbs that run models on data: eval (a job's result or a
// checkpoint on its tasks) and sweep (a lambda/density grid).
#include <chrono>
#include <cstdio>
#include <iostream>
#include <set>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "cli.h"
#include "mergeserve/ui/progress_bar.h"
#include "mergeserve/v1/merge.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace mergectl {
namespace {

using mergeserve::v1::MergeService;
using mergeserve::v1::TaskMetrics;

// A sweep's or evaluation's own job, as --json prints it.
nlohmann::json JobJson(const char* event, const mergeserve::v1::MergeJob& j) {
  return {{"event", event},
          {"id", j.id()},
          {"kind", j.kind()},
          {"state", mergeserve::v1::JobState_Name(j.state())},
          {"replica", j.replica()},
          {"attempt", j.attempt()}};
}

// Says once which job does the work: it runs on if this command stops.
void AnnounceJob(const char* what, const mergeserve::v1::MergeJob& j,
                 bool* announced) {
  if (*announced) return;
  *announced = true;
  std::fprintf(stderr,
               "%s job %s (it runs on if this command stops: mergectl "
               "cancel %s)\n",
               what, j.id().c_str(), j.id().c_str());
}

nlohmann::json ToJson(const TaskMetrics& m) {
  return {{"task", m.task()},
          {"dataset", m.dataset()},
          {"head", m.head()},
          {"examples", m.examples()},
          {"accuracy", m.accuracy()},
          {"mean_cross_entropy", m.mean_cross_entropy()}};
}

int Evaluate(const Args& args, const std::shared_ptr<grpc::Channel>& ch,
             const mergeserve::v1::EvaluateRequest& req) {
  auto stub = MergeService::NewStub(ch);
  mergeserve::v1::EvaluateEvent ev;
  const std::string what = req.has_job_id() ? req.job_id() : req.checkpoint();
  mergeserve::ProgressBar merge_bar(stderr, "merging " + what);
  mergeserve::ProgressBar eval_bar(stderr, "evaluating " + what);
  bool header = false, announced = false;
  // A stream broken by its replica going away is opened again with the same
  // request, which follows the same job; tasks already shown are skipped.
  std::set<std::string> seen;
  grpc::Status s;
  for (int reconnects = 0;; ++reconnects) {
    grpc::ClientContext ctx;
    auto reader = stub->Evaluate(&ctx, req);
    while (reader->Read(&ev)) {
      if (ev.has_task() && !seen.insert(ev.task().task()).second) continue;
      if (args.json) {
        nlohmann::json j;
        if (ev.has_evaluation()) {
          j = JobJson("evaluation", ev.evaluation());
        } else if (ev.has_job()) {
          j = {{"event", "job"},
               {"id", ev.job().id()},
               {"state", mergeserve::v1::JobState_Name(ev.job().state())},
               {"phase", ev.job().phase()},
               {"tensors_done", ev.job().tensors_done()},
               {"tensors_total", ev.job().tensors_total()}};
        } else if (ev.has_progress()) {
          j = {{"event", "progress"},
               {"task", ev.progress().task()},
               {"done", ev.progress().done()},
               {"total", ev.progress().total()}};
        } else if (ev.has_task()) {
          j = ToJson(ev.task());
          j["event"] = "task";
        } else if (ev.has_summary()) {
          nlohmann::json tasks = nlohmann::json::array();
          for (const auto& t : ev.summary().tasks()) tasks.push_back(ToJson(t));
          j = {{"event", "summary"},
               {"tasks", tasks},
               {"mean_accuracy", ev.summary().mean_accuracy()},
               {"seconds", ev.summary().seconds()}};
        }
        std::cout << j.dump() << std::endl;
        continue;
      }
      if (ev.has_evaluation()) {
        merge_bar.Finish();
        AnnounceJob("evaluation", ev.evaluation(), &announced);
      } else if (ev.has_job()) {
        const auto& job = ev.job();
        if (!job.phase().empty() && job.phase() != "merge") {
          merge_bar.Update(job.phase_done(), job.phase_total(), job.phase());
        } else {
          merge_bar.Update(job.tensors_done(), job.tensors_total(), "tensors");
        }
      } else if (ev.has_progress()) {
        merge_bar.Finish();
        eval_bar.Update(ev.progress().done(), ev.progress().total(),
                        ev.progress().task());
      } else if (ev.has_task()) {
        eval_bar.Finish();
        if (!header) {
          std::printf("%-12s %-20s %-16s %8s %9s %8s\n", "TASK", "DATASET",
                      "HEAD", "EXAMPLES", "ACCURACY", "CE");
          header = true;
        }
        const auto& t = ev.task();
        std::printf("%-12s %-20s %-16s %8lld %9.4f %8.4f\n", t.task().c_str(),
                    t.dataset().c_str(), t.head().c_str(),
                    static_cast<long long>(t.examples()), t.accuracy(),
                    t.mean_cross_entropy());
        std::fflush(stdout);
      } else if (ev.has_summary()) {
        std::printf("mean accuracy %.4f over %d tasks (%.2f s)\n",
                    ev.summary().mean_accuracy(), ev.summary().tasks_size(),
                    ev.summary().seconds());
      }
    }
    s = reader->Finish();
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE || reconnects >= 10) {
      break;
    }
    std::this_thread::sleep_for(
        std::chrono::milliseconds(200 << std::min(reconnects, 4)));
  }
  merge_bar.Finish();
  eval_bar.Finish();
  return s.ok() ? 0 : Fail(s, args.server);
}

bool ParseList(const std::string& text, const char* flag,
               std::vector<double>* out) {
  if (text.empty()) return true;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    double v;
    if (!absl::SimpleAtod(part, &v)) {
      std::fprintf(stderr, "mergectl sweep: %s takes numbers like 0.2,0.4\n",
                   flag);
      return false;
    }
    out->push_back(v);
  }
  return true;
}

std::string Opt(bool has, double v) {
  char buf[32];
  if (!has) return "-";
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

int Sweep(const Args& args, const std::shared_ptr<grpc::Channel>& ch) {
  std::string yaml;
  if (int rc = ReadConfigArg(args, "sweep", &yaml); rc != 0) return rc;
  mergeserve::v1::SweepRequest req;
  req.mutable_spec()->set_config_yaml(yaml);
  std::vector<double> lambdas, densities;
  if (!ParseList(args.lambdas, "--lambda", &lambdas) ||
      !ParseList(args.densities, "--density", &densities)) {
    return 2;
  }
  for (const std::string& p : args.params) {
    const size_t eq = p.find('=');
    std::vector<double> values;
    if (eq == std::string::npos || eq == 0 ||
        !ParseList(p.substr(eq + 1), "--param", &values)) {
      std::fprintf(stderr, "mergectl sweep: --param takes NAME=V1,V2,...\n");
      return 2;
    }
    auto* axis = req.add_axes();
    axis->set_parameter(p.substr(0, eq));
    for (double v : values) axis->add_values(v);
  }
  if (lambdas.empty() && densities.empty() && args.params.empty()) {
    std::fprintf(
        stderr, "mergectl sweep: give --lambda, --density or --param values\n");
    return 2;
  }
  for (double v : lambdas) req.add_lambdas(v);
  for (double v : densities) req.add_densities(v);
  for (const auto& t : args.tasks) req.add_tasks(t);
  req.set_max_examples(args.examples);
  auto stub = MergeService::NewStub(ch);
  mergeserve::v1::SweepEvent ev;
  const size_t points = std::max<size_t>(1, lambdas.size()) *
                        std::max<size_t>(1, densities.size());
  mergeserve::ProgressBar bar(stderr, "sweep");
  std::vector<std::string> task_names, axes;
  int done = 0;
  bool announced = false;
  // As for eval: reopened on another replica, points already shown skipped.
  std::set<int> seen;
  grpc::Status s;
  for (int reconnects = 0;; ++reconnects) {
    grpc::ClientContext ctx;
    auto reader = stub->Sweep(&ctx, req);
    while (reader->Read(&ev)) {
      if (ev.has_point() && !seen.insert(ev.point().index()).second) continue;
      if (args.json) {
        nlohmann::json j;
        if (ev.has_job()) {
          j = JobJson("job", ev.job());
        } else if (ev.has_phase()) {
          j = {{"event", "phase"}, {"phase", ev.phase()}};
        } else if (ev.has_point()) {
          const auto& p = ev.point();
          nlohmann::json tasks = nlohmann::json::array();
          for (const auto& t : p.tasks()) tasks.push_back(ToJson(t));
          j = {{"event", "point"},
               {"index", p.index()},
               {"values", std::map<std::string, double>(p.values().begin(),
                                                        p.values().end())},
               {"tasks", tasks},
               {"mean_accuracy", p.mean_accuracy()},
               {"merge_seconds", p.merge_seconds()},
               {"eval_seconds", p.eval_seconds()}};
        } else if (ev.has_summary()) {
          const auto& s = ev.summary();
          j = {{"event", "summary"},
               {"best_index", s.best_index()},
               {"best_mean_accuracy", s.best().mean_accuracy()},
               {"best_values",
                std::map<std::string, double>(s.best().values().begin(),
                                              s.best().values().end())},
               {"seconds", s.seconds()},
               {"trim_cache_hits", s.trim_cache_hits()},
               {"trim_cache_misses", s.trim_cache_misses()},
               {"stats_hits", s.stats_hits()},
               {"stats_misses", s.stats_misses()}};
        }
        std::cout << j.dump() << std::endl;
        continue;
      }
      if (ev.has_job()) {
        AnnounceJob("sweep", ev.job(), &announced);
      } else if (ev.has_phase()) {
        bar.Update(done, static_cast<int64_t>(points), ev.phase());
      } else if (ev.has_point()) {
        const auto& p = ev.point();
        bar.Finish();
        if (task_names.empty()) {
          std::printf("%5s", "POINT");
          for (const auto& [name, v] : p.values()) {
            axes.push_back(name);
            std::printf(" %9.9s", name.c_str());
          }
          for (const auto& t : p.tasks()) {
            task_names.push_back(t.task());
            std::printf(" %9.9s", t.task().c_str());
          }
          std::printf(" %9s %8s\n", "MEAN", "SECONDS");
        }
        std::printf("%5d", p.index());
        for (const std::string& a : axes) {
          std::printf(" %9s", Opt(true, p.values().at(a)).c_str());
        }
        for (const auto& t : p.tasks()) std::printf(" %9.4f", t.accuracy());
        std::printf(" %9.4f %8.2f\n", p.mean_accuracy(),
                    p.merge_seconds() + p.eval_seconds());
        std::fflush(stdout);
        ++done;
      } else if (ev.has_summary()) {
        const auto& s = ev.summary();
        std::string at;
        for (const auto& [name, v] : s.best().values()) {
          at += (at.empty() ? "" : ", ") + name + " " + Opt(true, v);
        }
        std::printf(
            "best: point %d (%s), mean accuracy %.4f; "
            "%.2f s; trim cache %lld hits / %lld misses; statistics %lld "
            "reused / %lld computed\n",
            s.best_index(), at.c_str(), s.best().mean_accuracy(), s.seconds(),
            static_cast<long long>(s.trim_cache_hits()),
            static_cast<long long>(s.trim_cache_misses()),
            static_cast<long long>(s.stats_hits()),
            static_cast<long long>(s.stats_misses()));
      }
    }
    s = reader->Finish();
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE || reconnects >= 10) {
      break;
    }
    std::this_thread::sleep_for(
        std::chrono::milliseconds(200 << std::min(reconnects, 4)));
  }
  bar.Finish();
  return s.ok() ? 0 : Fail(s, args.server);
}

}  // namespace

int EvaluateJob(const Args& args, const std::shared_ptr<grpc::Channel>& ch,
                const std::string& job_id) {
  mergeserve::v1::EvaluateRequest req;
  req.set_job_id(job_id);
  for (const auto& t : args.tasks) req.add_tasks(t);
  req.set_max_examples(args.examples);
  return Evaluate(args, ch, req);
}

int RunEvalVerb(const Args& args, const std::shared_ptr<grpc::Channel>& ch) {
  const std::string& verb = args.positional[0];
  if (verb == "sweep") return Sweep(args, ch);
  if (verb != "eval") return -1;
  if (args.positional.size() != 2) {
    std::fprintf(stderr,
                 "mergectl eval: expected TARGET (a job or a "
                 "checkpoint)\n");
    return 2;
  }
  const std::string& target = args.positional[1];
  if (target.rfind("job-", 0) == 0) return EvaluateJob(args, ch, target);
  mergeserve::v1::EvaluateRequest req;
  req.set_checkpoint(target);
  for (const auto& t : args.tasks) req.add_tasks(t);
  req.set_max_examples(args.examples);
  return Evaluate(args, ch, req);
}

}  // namespace mergectl
