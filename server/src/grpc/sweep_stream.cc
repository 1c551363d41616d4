// MergeService.Sweep: validated and submitted as a sweep job on the control
// executor, then followed (on whichever replica runs it).
#include "grpc/call.h"
#include "grpc/proto_convert.h"
#include "grpc/work_streams.h"
#include "mergeserve/jobs/sweep_job.h"

namespace mergeserve {

void StartSweep(JobManager& jobs, BackgroundExecutor& control,
                const ConfigLimits& limits, const std::string& tenant,
                const v1::SweepRequest& req,
                std::shared_ptr<SweepEmitter> out) {
  const bool queued = control.TrySubmit([&jobs, limits, tenant, req, out] {
    auto config = SpecToConfig(req.spec(), limits);
    if (!config.ok()) {
      out->Done(config.status());
      return;
    }
    SweepParams params;
    if (req.densities_size() > 0) {
      params.grid.push_back(
          {"density", {req.densities().begin(), req.densities().end()}});
    }
    for (const v1::SweepAxis& a : req.axes()) {
      params.grid.push_back(
          {a.parameter(), {a.values().begin(), a.values().end()}});
    }
    if (req.lambdas_size() > 0) {
      params.grid.push_back(
          {"lambda", {req.lambdas().begin(), req.lambdas().end()}});
    }
    params.tasks.assign(req.tasks().begin(), req.tasks().end());
    params.max_examples = std::max<int64_t>(0, req.max_examples());
    auto job = SubmitSweep(jobs, {tenant, *std::move(config), {}}, params);
    if (!job.ok()) {
      out->Done(job.status());
      return;
    }
    JobStreamView<v1::SweepEvent> view;
    view.on_record = [out](const JobRecord& r, bool changed) {
      v1::SweepEvent e;
      if (changed) {
        ToProto(r, e.mutable_job());
        out->Emit(e);
      } else if (!r.phase.empty()) {
        e.set_phase(r.phase);
        out->Emit(e, /*progress=*/true);
      }
    };
    view.on_entry =
        [](const JobLogEntry& entry) -> absl::StatusOr<v1::SweepEvent> {
      auto point = SweepPointFromJson(entry.payload);
      if (!point.ok()) return point.status();
      v1::SweepEvent e;
      ToProto(*point, e.mutable_point());
      return e;
    };
    view.on_result = [](const JobRecord& r) -> absl::StatusOr<v1::SweepEvent> {
      auto summary = SweepSummaryFromJson(r.result);
      if (!summary.ok()) return summary.status();
      v1::SweepEvent e;
      ToProto(*summary, e.mutable_summary());
      return e;
    };
    FollowJobStream<v1::SweepEvent>(jobs, tenant, job->id, std::move(view),
                                    out);
  });
  if (!queued) {
    out->Done(ControlBusy());
  }
}

}  // namespace mergeserve
