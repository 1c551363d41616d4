// Sweeps as jobs on the digits zoo: content-addressed, their points logged
// and followed to the summary, and a later attempt resuming after the
// points an earlier one logged.
#include "mergeserve/jobs/sweep_job.h"

#include <filesystem>
#include <mutex>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "jobs/digits_zoo_fixture.h"
#include "mergeserve/jobs/sweep_runner.h"

namespace mergeserve {
namespace {

using SweepJobTest = DigitsZooTest;

// Follows a job to its end: the events it logged (from `after` on) and its
// final record.
struct Followed {
  std::vector<JobLogEntry> events;
  JobRecord end;
};

Followed FollowToTheEnd(JobManager& jobs, const std::string& id) {
  std::mutex mu;
  std::condition_variable cv;
  Followed out;
  bool ended = false;
  auto wait = jobs.FollowEvents(
      kDefaultTenant, id, 0,
      [&](const JobLogEntry& e) {
        std::lock_guard<std::mutex> lock(mu);
        out.events.push_back(e);
      },
      nullptr,
      [&](const JobRecord& r) {
        std::lock_guard<std::mutex> lock(mu);
        out.end = r;
        ended = true;
        cv.notify_all();
      });
  EXPECT_TRUE(wait.ok()) << wait.status();
  std::unique_lock<std::mutex> lock(mu);
  EXPECT_TRUE(
      cv.wait_for(lock, std::chrono::minutes(5), [&] { return ended; }));
  return out;
}

TEST_F(SweepJobTest, ASweepIsAJobWhosePointsAreLoggedAndFollowedToItsSummary) {
  SweepParams params;
  params.grid = {{"lambda", {0.5, 1.0}}, {"density", {0.2, 0.6}}};
  params.max_examples = 64;
  const std::string yaml = Yaml("ties", "");
  auto job = SubmitSweep(*jobs_, testing::Request(yaml), params);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->kind, kSweepJob);
  EXPECT_EQ(job->method, "ties");
  // The same request is the same job, while it runs and after.
  auto again = SubmitSweep(*jobs_, testing::Request(yaml), params);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->id, job->id);
  Followed f = FollowToTheEnd(*jobs_, job->id);
  ASSERT_EQ(f.end.state, JobState::kSucceeded) << f.end.error_message;
  ASSERT_EQ(f.events.size(), 4u);
  std::vector<SweepPoint> points;
  for (size_t i = 0; i < f.events.size(); ++i) {
    EXPECT_EQ(f.events[i].seq, static_cast<int64_t>(i + 1));
    auto p = SweepPointFromJson(f.events[i].payload);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(p->index, static_cast<int>(i));
    EXPECT_EQ(p->tasks.size(), 4u);
    points.push_back(*p);
  }
  EXPECT_EQ(points[1].values[1],
            (std::pair<std::string, double>{"density", 0.6}));
  auto summary = SweepSummaryFromJson(f.end.result);
  ASSERT_TRUE(summary.ok()) << summary.status();
  double best = 0;
  for (const SweepPoint& p : points) best = std::max(best, p.mean_accuracy);
  EXPECT_EQ(summary->best.mean_accuracy, best);
  EXPECT_EQ(summary->best.values, points[summary->best_index].values);
  auto after = SubmitSweep(*jobs_, testing::Request(yaml), params);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->id, job->id);
  EXPECT_EQ(after->state, JobState::kSucceeded);
  // A different grid is another sweep.
  params.grid[0].values = {0.7};
  auto other = SubmitSweep(*jobs_, testing::Request(yaml), params);
  ASSERT_TRUE(other.ok());
  EXPECT_NE(other->id, job->id);
  ASSERT_TRUE(jobs_->Cancel(kDefaultTenant, other->id).ok());

  // A later attempt resumes: the points an earlier one logged stand as
  // they are (here one made to look best), the rest are run and logged.
  JobRecord stored = *jobs_->Get(kDefaultTenant, job->id);
  stored.attempt = 2;
  auto planned = PlanSweepJob(*jobs_, stored);
  ASSERT_TRUE(planned.ok()) << planned.status();
  SweepPoint forged = points[1];
  forged.mean_accuracy = 2.0;
  JobContext ctx;
  ctx.job = stored;
  ctx.earlier = {f.events[0], {2, 1, SweepPointToJson(forged)}};
  std::vector<int> logged;
  ctx.log = [&](const std::string& payload) {
    logged.push_back(SweepPointFromJson(payload)->index);
    return absl::OkStatus();
  };
  ctx.progress = [](const std::string&, int64_t, int64_t) {};
  auto result = planned->run(ctx);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(logged, (std::vector<int>{2, 3}));
  auto resumed = SweepSummaryFromJson(*result);
  ASSERT_TRUE(resumed.ok());
  EXPECT_EQ(resumed->best_index, 1);
  EXPECT_EQ(resumed->best.mean_accuracy, 2.0);
  // A log the run cannot write to (the lease was lost) stops it.
  ctx.earlier.clear();
  ctx.log = [](const std::string&) {
    return absl::AbortedError("replica 'a' no longer holds attempt 2");
  };
  EXPECT_EQ(planned->run(ctx).status().code(), absl::StatusCode::kAborted);
}

// Where λ or one weight varies fastest, a row's points are merged in one
// pass (the experts read once, one result per point) and evaluate exactly as
// points merged one by one. A point an earlier attempt logged splits its
// row. Where a density varies fastest, or the method writes no variants
// (Fisher), points run alone.
TEST_F(SweepJobTest, ARowOfPointsIsMergedInOnePass) {
  const MergeRequest request = testing::Request(Yaml("ties", "density: 0.4"));
  const SweepGrid lambdas = {{"density", {0.2, 0.6}},
                             {"lambda", {0.5, 0.8, 1.2}}};
  const SweepGrid weights = {{"lambda", {0.9}},
                             {"weight@parity", {0.5, 1.5, 2.5}}};
  SweepOptions o;
  o.max_examples = 64;
  auto fused_points = [&](const MergeRequest& r, const SweepGrid& grid) {
    auto plan = PlanSweep(*jobs_, r, grid, o);
    EXPECT_TRUE(plan.ok()) << plan.status();
    return plan.ok() ? plan->fused_points : -1;
  };
  EXPECT_EQ(fused_points(request, lambdas), 3);
  EXPECT_EQ(fused_points(request, weights), 3);
  EXPECT_EQ(fused_points(request,
                         {{"weight@parity", {1, 2}}, {"density", {0.2, 0.4}}}),
            1);
  EXPECT_EQ(fused_points(testing::Request(Yaml("fisher", "examples: 32")),
                         {{"lambda", {0.5, 1.0}}}),
            1);

  struct Run {
    std::vector<SweepPoint> points;
    std::vector<std::string> merges;  // the merge phases, in order
  };
  auto run = [&](const SweepGrid& grid, int64_t fused,
                 std::map<int, SweepPoint> done) {
    Run r;
    SweepOptions ro = o;
    ro.fused_points = fused;
    ro.done = std::move(done);
    ro.on_phase = [&r](const std::string& phase, int64_t, int64_t) {
      if (phase.size() > 7 && phase.substr(phase.size() - 7) == ": merge") {
        r.merges.push_back(phase);
      }
    };
    ro.on_point = [&r](const SweepPoint& p) {
      r.points.push_back(p);
      return absl::OkStatus();
    };
    auto summary = RunSweep(*jobs_, request, grid, ro);
    EXPECT_TRUE(summary.ok()) << summary.status();
    return r;
  };
  auto expect_same = [](const Run& one, const Run& fused) {
    ASSERT_EQ(fused.points.size(), one.points.size());
    for (size_t i = 0; i < one.points.size(); ++i) {
      SCOPED_TRACE(i);
      const SweepPoint& a = one.points[i];
      const SweepPoint& b = fused.points[i];
      EXPECT_EQ(b.index, static_cast<int>(i));
      EXPECT_EQ(b.values, a.values);
      EXPECT_EQ(b.mean_accuracy, a.mean_accuracy);
      ASSERT_EQ(b.tasks.size(), a.tasks.size());
      for (size_t t = 0; t < a.tasks.size(); ++t) {
        EXPECT_EQ(b.tasks[t].task, a.tasks[t].task);
        EXPECT_EQ(b.tasks[t].accuracy, a.tasks[t].accuracy);
        EXPECT_EQ(b.tasks[t].mean_cross_entropy, a.tasks[t].mean_cross_entropy);
      }
    }
    // The row's numbers change the results (else this proves little).
    EXPECT_NE(one.points[0].tasks[0].mean_cross_entropy,
              one.points[2].tasks[0].mean_cross_entropy);
  };
  const Run one = run(lambdas, 1, {});
  const Run fused = run(lambdas, 3, {});
  EXPECT_EQ(one.merges.size(), 6u);
  EXPECT_EQ(fused.merges, (std::vector<std::string>{"points 0-2: merge",
                                                    "points 3-5: merge"}));
  expect_same(one, fused);
  const Run resumed = run(lambdas, 3, {{1, one.points[1]}});
  EXPECT_EQ(resumed.merges,
            (std::vector<std::string>{"point 0: merge", "point 2: merge",
                                      "points 3-5: merge"}));
  ASSERT_EQ(resumed.points.size(), 5u);
  EXPECT_EQ(resumed.points[1].index, 2);
  EXPECT_EQ(resumed.points[1].mean_accuracy, one.points[2].mean_accuracy);

  const Run by_weight = run(weights, 3, {});
  EXPECT_EQ(by_weight.merges, (std::vector<std::string>{"points 0-2: merge"}));
  expect_same(run(weights, 1, {}), by_weight);
  // Two axes of λ (the RPC's axes and lambdas may both name it): a point
  // merges the value its config ends with, the earlier axis's, so a row
  // is the points whose configs differ in λ alone.
  const SweepGrid twice = {{"lambda", {0.5, 1.2}}, {"lambda", {0.7, 0.9, 1.1}}};
  EXPECT_EQ(fused_points(request, twice), 3);
  const Run twice_one = run(twice, 1, {});
  const Run twice_fused = run(twice, 3, {});
  ASSERT_EQ(twice_fused.points.size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(twice_fused.points[i].mean_accuracy,
              twice_one.points[i].mean_accuracy)
        << i;
    EXPECT_EQ(twice_fused.points[i].tasks[0].mean_cross_entropy,
              twice_one.points[i].tasks[0].mean_cross_entropy)
        << i;
  }
  // Points 0-2 merge λ 0.5 (the same config): the same results.
  EXPECT_EQ(twice_fused.points[2].tasks[0].mean_cross_entropy,
            twice_fused.points[0].tasks[0].mean_cross_entropy);
  // Every point's folder is gone: into the pool, whose files later sweeps
  // (those above, after the first) overwrite for their results, which
  // matched merges of their own.
  for (const auto& e : std::filesystem::directory_iterator(
           registry_->data_dir() + "/scratch")) {
    EXPECT_EQ(e.path().filename().string().find("sweep-"), std::string::npos)
        << e.path();
  }
  EXPECT_GT(jobs_->scratch_pool()->kept_bytes(), 0);
  EXPECT_GT(jobs_->scratch_pool()->taken(), 0);
}

TEST_F(SweepJobTest, BadGridsAreRefusedBeforeAnythingIsQueued) {
  SweepParams params;
  params.grid = {{"nonsense", {1}}};
  auto job = SubmitSweep(*jobs_, testing::Request(Yaml("ties", "")), params);
  EXPECT_EQ(job.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(job.status().message()),
              ::testing::HasSubstr("'nonsense'"));
  // Every point's numbers are in range, not only the first point's.
  for (const SweepAxis& axis :
       {SweepAxis{"lambda", {0.5, 2e6}}, SweepAxis{"weight@parity", {1, -3e6}},
        SweepAxis{"density", {0.2, 1.5}}}) {
    params.grid = {axis};
    job = SubmitSweep(*jobs_, testing::Request(Yaml("ties", "")), params);
    EXPECT_EQ(job.status().code(), absl::StatusCode::kInvalidArgument)
        << axis.parameter;
    EXPECT_THAT(std::string(job.status().message()),
                ::testing::HasSubstr("must be in"));
  }
  params.grid = {{"lambda", {0.5}}};
  params.tasks = {"no-such-task"};
  job = SubmitSweep(*jobs_, testing::Request(Yaml("ties", "")), params);
  EXPECT_EQ(job.status().code(), absl::StatusCode::kFailedPrecondition);
  auto listed = jobs_->List(kDefaultTenant, std::nullopt, {});
  ASSERT_TRUE(listed.ok());
  EXPECT_TRUE(listed->items.empty());
}

TEST(SweepJobCodecTest, ParamsPointsAndSummariesRoundTripAndBadTextIsNamed) {
  SweepParams p;
  p.grid = {{"lambda", {0.1, 1.0 / 3}}, {"weight@mod3", {2}}};
  p.tasks = {"parity"};
  p.max_examples = 7;
  auto back = SweepParamsFromJson(SweepParamsToJson(p));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->grid[0].values, p.grid[0].values);  // exact doubles
  EXPECT_EQ(back->grid[1].parameter, "weight@mod3");
  EXPECT_EQ(back->tasks, p.tasks);
  EXPECT_EQ(back->max_examples, 7);
  EXPECT_EQ(SweepParamsFromJson("{").status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(
      SweepPointFromJson(R"({"index":0,"values":[[1,2]]})").status().code(),
      absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace mergeserve
