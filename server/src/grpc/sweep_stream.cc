// MergeService.Sweep: validated on the control executor, run as one work
// item on the executor (every point merged and evaluated in turn).
#include "absl/strings/str_cat.h"
#include "grpc/call.h"
#include "grpc/proto_convert.h"
#include "grpc/work_streams.h"
#include "mergeserve/jobs/sweep_runner.h"

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
    MergeRequest request{tenant, *std::move(config)};
    SweepGrid grid;
    if (req.densities_size() > 0) {
      grid.push_back(
          {"density", {req.densities().begin(), req.densities().end()}});
    }
    for (const v1::SweepAxis& a : req.axes()) {
      grid.push_back({a.parameter(), {a.values().begin(), a.values().end()}});
    }
    if (req.lambdas_size() > 0) {
      grid.push_back({"lambda", {req.lambdas().begin(), req.lambdas().end()}});
    }
    SweepOptions o;
    o.tasks.assign(req.tasks().begin(), req.tasks().end());
    o.max_examples = std::max<int64_t>(0, req.max_examples());
    o.cancelled = out->cancelled();
    auto memory = PlanSweep(jobs, request, grid, o);
    if (!memory.ok()) {
      out->Done(memory.status());
      return;
    }
    WorkItem item;
    item.kind = "sweep";
    item.label = tenant;
    item.memory = *memory;
    item.run = [&jobs, request, grid, o, out](const std::atomic<bool>&) {
      SweepOptions opts = o;
      opts.on_phase = [&](const std::string& phase) {
        v1::SweepEvent e;
        e.set_phase(phase);
        out->Emit(e, /*progress=*/true);
      };
      opts.on_point = [&](const SweepPoint& p) {
        v1::SweepEvent e;
        ToProto(p, e.mutable_point());
        out->Emit(e);
      };
      auto summary = RunSweep(jobs, request, grid, opts);
      if (!summary.ok()) {
        out->Done(summary.status());
        return;
      }
      v1::SweepEvent e;
      ToProto(*summary, e.mutable_summary());
      out->Emit(e);
      out->Done(absl::OkStatus());
    };
    QueueStreamWork<v1::SweepEvent>(jobs, std::move(item), out);
  });
  if (!queued) {
    out->Done(ControlBusy());
  }
}

}  // namespace mergeserve
