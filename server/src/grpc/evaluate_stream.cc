// MergeService.Evaluate: a job's result (waiting for the job through its
// listener, streaming its progress, holding no thread) or a checkpoint,
// evaluated by a work item on the executor.
#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "grpc/call.h"
#include "grpc/proto_convert.h"
#include "grpc/work_streams.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/jobs/task_evaluator.h"
#include "mergeserve/registry/storage_roots.h"

namespace mergeserve {
namespace {

// Queues the evaluation of `target` on the executor.
void Run(JobManager& jobs, EvalTarget target,
         std::vector<std::string> memory_of,
         std::shared_ptr<EvaluateEmitter> out) {
  auto memory =
      EstimateEvaluationMemory(*jobs.registry(), target.tenant, memory_of);
  if (!memory.ok()) {
    out->Done(memory.status());
    return;
  }
  target.cancelled = out->cancelled();
  WorkItem item;
  item.kind = "evaluate";
  item.label = target.tenant;
  item.memory = *memory;
  item.run = [&jobs, target, out](const std::atomic<bool>&) {
    const auto start = std::chrono::steady_clock::now();
    TaskEvaluator evaluator(jobs.registry(), jobs.options().device);
    auto tasks = evaluator.Run(
        target,
        [&](const std::string& task, int64_t done, int64_t total) {
          v1::EvaluateEvent e;
          e.mutable_progress()->set_task(task);
          e.mutable_progress()->set_done(done);
          e.mutable_progress()->set_total(total);
          out->Emit(e, /*progress=*/true);
        },
        [&](const TaskMetrics& m) {
          v1::EvaluateEvent e;
          ToProto(m, e.mutable_task());
          out->Emit(e);
        });
    if (!tasks.ok()) {
      out->Done(tasks.status());
      return;
    }
    v1::EvaluateEvent e;
    for (const TaskMetrics& m : *tasks) {
      ToProto(m, e.mutable_summary()->add_tasks());
    }
    e.mutable_summary()->set_mean_accuracy(MeanAccuracy(*tasks));
    e.mutable_summary()->set_seconds(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count());
    out->Emit(e);
    out->Done(absl::OkStatus());
  };
  QueueStreamWork<v1::EvaluateEvent>(jobs, std::move(item), out);
}

}  // namespace

void StartEvaluate(JobManager& jobs, BackgroundExecutor& control,
                   const std::string& tenant, const v1::EvaluateRequest& req,
                   std::shared_ptr<EvaluateEmitter> out) {
  EvalTarget target;
  target.tenant = tenant;
  target.tasks.assign(req.tasks().begin(), req.tasks().end());
  target.batch_size = std::clamp<int64_t>(
      req.batch_size() > 0 ? req.batch_size() : 256, 1, 4096);
  target.max_examples = std::max<int64_t>(0, req.max_examples());
  if (req.target_case() == v1::EvaluateRequest::kCheckpoint) {
    const std::string name = req.checkpoint();
    const bool queued = control.TrySubmit([&jobs, target, name, out]() mutable {
      auto c = jobs.registry()->Get(target.tenant, name, false);
      if (!c.ok()) {
        out->Done(c.status());
        return;
      }
      target.checkpoint = c->name;
      target.weights_dir = c->path;
      target.weights_check = jobs.registry()->FileCheckFor(*c);
      Run(jobs, target, {c->name}, out);
    });
    if (!queued) {
      out->Done(ControlBusy());
    }
    return;
  }
  if (req.target_case() != v1::EvaluateRequest::kJobId) {
    out->Done(
        absl::InvalidArgumentError("evaluate needs a job_id or a checkpoint"));
    return;
  }
  const std::string id = req.job_id();
  // Follows the job (on any replica) and evaluates its result once it
  // succeeded.
  auto wait = jobs.FollowToEnd(
      tenant, id,
      [out](const JobRecord& r) {
        v1::EvaluateEvent e;
        ToProto(r, e.mutable_job());
        out->Emit(e, /*progress=*/!IsFinal(r.state));
      },
      [&jobs, target, id, out](const JobRecord& r) {
        if (r.state != JobState::kSucceeded) {
          out->Done(absl::FailedPreconditionError(
              absl::StrCat("job '", id, "' has no result to evaluate: ",
                           r.error_message.empty() ? "it did not succeed"
                                                   : r.error_message)));
          return;
        }
        auto config = MergeConfig::FromYaml(r.config_yaml, "");
        if (!config.ok()) {
          out->Done(config.status());
          return;
        }
        EvalTarget t = target;
        t.preferred_heads = ExpertsOf(*config);
        t.weights_dir = r.result_dir;
        t.weights_check = StorageRoots::OwnedFileCheck(r.result_dir);
        t.merged_regex = MergedTensorsRegex(*config);
        Run(jobs, t, t.preferred_heads, out);
      });
  if (!wait.ok()) {
    out->Done(wait.status());
    return;
  }
  // The client left while the job ran: stop following it. Once the job
  // ended, Run has put cancelling the evaluation's ticket in this place.
  if (!(*wait)->ended()) {
    out->OnCancel([w = *wait, out] {
      if (w->Stop()) out->Done(absl::CancelledError("the client went away"));
    });
  }
}

}  // namespace mergeserve
