// Evaluations as jobs on the digits zoo: of a checkpoint and of a merge
// job's result, content-addressed, each task logged, resumable.
#include "mergeserve/jobs/evaluation_job.h"

#include <mutex>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "jobs/digits_zoo_fixture.h"

namespace mergeserve {
namespace {

using EvaluationJobTest = DigitsZooTest;

JobRecord WaitEnd(JobManager& jobs, const std::string& id) {
  for (int i = 0; i < 30000; ++i) {
    auto now = jobs.Get(kDefaultTenant, id);
    if (now.ok() && IsFinal(now->state)) return *now;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ADD_FAILURE() << "job did not finish";
  return {};
}

TEST_F(EvaluationJobTest, ACheckpointsEvaluationIsAJobThatLogsEachTask) {
  EvalParams p;
  p.checkpoint = "parity";
  p.tasks = {"parity", "mod3"};
  p.max_examples = 100;
  auto job = SubmitEvaluation(*jobs_, kDefaultTenant, p);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->kind, kEvaluateJob);
  // The default batch size is the same request as an explicit 256.
  p.batch_size = 256;
  auto again = SubmitEvaluation(*jobs_, kDefaultTenant, p);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->id, job->id);
  JobRecord end = WaitEnd(*jobs_, job->id);
  ASSERT_EQ(end.state, JobState::kSucceeded) << end.error_message;
  auto summary = EvalSummaryFromJson(end.result);
  ASSERT_TRUE(summary.ok()) << summary.status();
  ASSERT_EQ(summary->tasks.size(), 2u);
  EXPECT_EQ(summary->tasks[0].task, "parity");
  EXPECT_EQ(summary->tasks[0].head, "parity");
  EXPECT_EQ(summary->tasks[0].examples, 100);
  EXPECT_EQ(summary->tasks[1].dataset, "mod3_eval");
  EXPECT_EQ(end.events, 2);
  // The log holds the same metrics, in task order (read on "another
  // replica": any follower from the start).
  std::vector<JobLogEntry> events;
  std::mutex mu;
  bool ended = false;
  std::condition_variable cv;
  auto wait = jobs_->FollowEvents(
      kDefaultTenant, job->id, 0,
      [&](const JobLogEntry& e) {
        std::lock_guard<std::mutex> lock(mu);
        events.push_back(e);
      },
      nullptr,
      [&](const JobRecord&) {
        std::lock_guard<std::mutex> lock(mu);
        ended = true;
        cv.notify_all();
      });
  ASSERT_TRUE(wait.ok());
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(
        cv.wait_for(lock, std::chrono::seconds(30), [&] { return ended; }));
  }
  ASSERT_EQ(events.size(), 2u);
  auto first = TaskMetricsFromJson(nlohmann::json::parse(events[0].payload));
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->accuracy, summary->tasks[0].accuracy);
  EXPECT_EQ(first->mean_cross_entropy, summary->tasks[0].mean_cross_entropy);

  // A later attempt keeps what an earlier one logged and runs the rest.
  JobRecord stored = *jobs_->Get(kDefaultTenant, job->id);
  auto planned = PlanEvaluationJob(*jobs_, stored);
  ASSERT_TRUE(planned.ok()) << planned.status();
  TaskMetrics forged = *first;
  forged.accuracy = 0.125;
  JobContext ctx;
  ctx.job = stored;
  ctx.earlier = {{1, 1, TaskMetricsToJson(forged).dump()}};
  std::vector<std::string> logged;
  ctx.log = [&](const std::string& payload) {
    logged.push_back(TaskMetricsFromJson(nlohmann::json::parse(payload))->task);
    return absl::OkStatus();
  };
  ctx.progress = [](const std::string&, int64_t, int64_t) {};
  auto result = planned->run(ctx);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(logged, (std::vector<std::string>{"mod3"}));
  auto resumed = EvalSummaryFromJson(*result);
  ASSERT_TRUE(resumed.ok());
  EXPECT_EQ(resumed->tasks[0].accuracy, 0.125);
  EXPECT_EQ(resumed->tasks[1].accuracy, summary->tasks[1].accuracy);
}

TEST_F(EvaluationJobTest, AMergeJobsResultIsEvaluatedOnceItSucceeded) {
  auto merge = jobs_->Submit(testing::Request(Yaml("task_arithmetic", "")));
  ASSERT_TRUE(merge.ok()) << merge.status();
  EvalParams p;
  p.job_id = merge->id;
  p.max_examples = 50;
  JobRecord done = WaitEnd(*jobs_, merge->id);
  ASSERT_EQ(done.state, JobState::kSucceeded) << done.error_message;
  auto job = SubmitEvaluation(*jobs_, kDefaultTenant, p);
  ASSERT_TRUE(job.ok()) << job.status();
  JobRecord end = WaitEnd(*jobs_, job->id);
  ASSERT_EQ(end.state, JobState::kSucceeded) << end.error_message;
  auto summary = EvalSummaryFromJson(end.result);
  ASSERT_TRUE(summary.ok());
  // The merge's experts' tasks, with their programs as heads.
  ASSERT_EQ(summary->tasks.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(summary->tasks[i].task, kTasks[i]);
    EXPECT_EQ(summary->tasks[i].head, kTasks[i]);
  }
  // Nothing to evaluate: named, and nothing is queued.
  p.job_id = job->id;  // an evaluation job has no weights
  auto bad = SubmitEvaluation(*jobs_, kDefaultTenant, p);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(bad.status().message()),
              ::testing::HasSubstr("evaluate job, not a merge"));
  p.job_id = "job-nothere";
  EXPECT_EQ(SubmitEvaluation(*jobs_, kDefaultTenant, p).status().code(),
            absl::StatusCode::kNotFound);
  p.job_id.clear();
  EXPECT_EQ(SubmitEvaluation(*jobs_, kDefaultTenant, p).status().code(),
            absl::StatusCode::kInvalidArgument);
  p.checkpoint = "parity";
  p.tasks = {"unknown-task"};
  EXPECT_EQ(SubmitEvaluation(*jobs_, kDefaultTenant, p).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace mergeserve
