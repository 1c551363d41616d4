// MergeService.Evaluate: a checkpoint, or a merge job's result once the job
// succeeded (followed, holding no thread, streaming its progress), is
// evaluated by an evaluation job, which the stream then follows.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "grpc/call.h"
#include "grpc/proto_convert.h"
#include "grpc/work_streams.h"
#include "mergeserve/jobs/evaluation_job.h"

namespace mergeserve {
namespace {

// Submits the evaluation (on the control executor) and follows its job.
void SubmitAndFollow(JobManager& jobs, BackgroundExecutor& control,
                     const std::string& tenant, const EvalParams& params,
                     std::shared_ptr<EvaluateEmitter> out) {
  const bool queued = control.TrySubmit([&jobs, tenant, params, out] {
    auto job = SubmitEvaluation(jobs, tenant, params);
    if (!job.ok()) {
      out->Done(job.status());
      return;
    }
    JobStreamView<v1::EvaluateEvent> view;
    view.on_record = [out](const JobRecord& r, bool changed) {
      v1::EvaluateEvent e;
      if (changed) {
        ToProto(r, e.mutable_evaluation());
        out->Emit(e);
      } else if (!r.phase.empty()) {
        e.mutable_progress()->set_task(r.phase);
        e.mutable_progress()->set_done(r.phase_done);
        e.mutable_progress()->set_total(r.phase_total);
        out->Emit(e, /*progress=*/true);
      }
    };
    view.on_entry =
        [](const JobLogEntry& entry) -> absl::StatusOr<v1::EvaluateEvent> {
      auto m = TaskMetricsFromJson(
          nlohmann::json::parse(entry.payload, nullptr, false));
      if (!m.ok()) return m.status();
      v1::EvaluateEvent e;
      ToProto(*m, e.mutable_task());
      return e;
    };
    view.on_result =
        [](const JobRecord& r) -> absl::StatusOr<v1::EvaluateEvent> {
      auto s = EvalSummaryFromJson(r.result);
      if (!s.ok()) return s.status();
      v1::EvaluateEvent e;
      for (const TaskMetrics& m : s->tasks) {
        ToProto(m, e.mutable_summary()->add_tasks());
      }
      e.mutable_summary()->set_mean_accuracy(s->mean_accuracy);
      e.mutable_summary()->set_seconds(s->seconds);
      return e;
    };
    FollowJobStream<v1::EvaluateEvent>(jobs, tenant, job->id, std::move(view),
                                       out);
  });
  if (!queued) {
    out->Done(ControlBusy());
  }
}

}  // namespace

void StartEvaluate(JobManager& jobs, BackgroundExecutor& control,
                   const std::string& tenant, const v1::EvaluateRequest& req,
                   std::shared_ptr<EvaluateEmitter> out) {
  EvalParams params;
  params.tasks.assign(req.tasks().begin(), req.tasks().end());
  params.batch_size = req.batch_size();
  params.max_examples = req.max_examples();
  if (req.target_case() == v1::EvaluateRequest::kCheckpoint) {
    params.checkpoint = req.checkpoint();
    SubmitAndFollow(jobs, control, tenant, params, out);
    return;
  }
  if (req.target_case() != v1::EvaluateRequest::kJobId) {
    out->Done(
        absl::InvalidArgumentError("evaluate needs a job_id or a checkpoint"));
    return;
  }
  params.job_id = req.job_id();
  // Follows the merge job (on any replica); its evaluation is submitted
  // once it succeeded.
  auto wait = jobs.FollowToEnd(
      tenant, params.job_id,
      [out](const JobRecord& r) {
        v1::EvaluateEvent e;
        ToProto(r, e.mutable_job());
        out->Emit(e, /*progress=*/!IsFinal(r.state));
      },
      [&jobs, &control, tenant, params, out](const JobRecord& r) {
        if (r.state != JobState::kSucceeded) {
          out->Done(absl::FailedPreconditionError(absl::StrCat(
              "job '", params.job_id, "' has no result to evaluate: ",
              r.error_message.empty() ? "it did not succeed"
                                      : r.error_message)));
          return;
        }
        if (!out->done()) SubmitAndFollow(jobs, control, tenant, params, out);
      });
  if (!wait.ok()) {
    out->Done(wait.status());
    return;
  }
  // The client left while the merge ran: stop following it.
  if (!(*wait)->ended()) {
    out->OnCancel([w = *wait, out] {
      if (w->Stop()) out->Done(absl::CancelledError("the client went away"));
    });
  }
}

}  // namespace mergeserve
