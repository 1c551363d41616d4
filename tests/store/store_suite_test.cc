// One suite for both stores: every test runs on SQLite (a file) and on a
// real PostgreSQL this binary starts itself (pg_test_server). "Replicas" are
// separate connections to the same database, as separate processes would
// hold.
#include <atomic>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "mergeserve/auth/tenant_quotas.h"
#include "mergeserve/auth/token_store.h"
#include "mergeserve/base/clock.h"
#include "mergeserve/jobs/job_store.h"
#include "mergeserve/registry/checkpoint_registry.h"
#include "mergeserve/store/database.h"
#include "mergeserve/store/postgres_database.h"
#include "pg_test_server.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using ::testing::HasSubstr;

class StoreTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    const std::string name =
        absl::StrCat("t", ::getpid(), "_", counter.fetch_add(1));
    if (GetParam() == "sqlite") {
      url_ = "sqlite://" + testing::TempDir(name) + "/mergeserve.db";
    } else {
      auto pg = testing::PgTestServer::Shared();
      ASSERT_TRUE(pg.ok()) << pg.status();
      auto url = (*pg)->CreateDatabase(name);
      ASSERT_TRUE(url.ok()) << url.status();
      url_ = *url;
    }
    db_ = Connect();
  }
  // Another connection to the same database (another replica).
  std::shared_ptr<Database> Connect() {
    auto db = OpenDatabase(url_);
    EXPECT_TRUE(db.ok()) << db.status();
    return db.ok() ? *db : nullptr;
  }
  std::unique_ptr<JobStore> Jobs(std::shared_ptr<Database> db) {
    auto s = JobStore::Open(std::move(db));
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }
  JobRecord NewJob(const std::string& id, const std::string& digest,
                   int64_t create_ms) {
    JobRecord j;
    j.tenant = "team-a";
    j.id = id;
    j.state = JobState::kQueued;
    j.config_yaml = "merge_method: ties\n";
    j.request_digest = digest;
    j.create_ms = create_ms;
    j.tensors_total = 7;
    j.method = "ties";
    return j;
  }
  std::string url_;
  std::shared_ptr<Database> db_;
};

TEST_P(StoreTest, MigrationsAreVersionedIdempotentAndRunOnceUnderConcurrency) {
  // Four replicas start at once: each step of a component runs once.
  ASSERT_TRUE(db_->Exec("CREATE TABLE applied (step BIGINT NOT NULL)").ok());
  std::vector<Migration> steps;
  for (int v = 1; v <= 3; ++v) {
    steps.push_back({v, "demo", nullptr});
  }
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int r = 0; r < 4; ++r) {
    threads.emplace_back([&] {
      std::shared_ptr<Database> db = Connect();
      std::vector<Migration> mine = steps;
      for (Migration& m : mine) {
        const int v = m.version;
        Database* d = db.get();
        m.apply = [d, v] {
          return d->Exec("INSERT INTO applied (step) VALUES (?)", {int64_t{v}});
        };
      }
      if (!db->Migrate("demo", mine).ok()) ++failures;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures, 0);
  auto rows = db_->Query("SELECT step FROM applied ORDER BY step");
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 3u);
  for (int v = 1; v <= 3; ++v) EXPECT_EQ(SqlInt((*rows)[v - 1][0]), v);
  auto version = db_->SchemaVersion("demo");
  ASSERT_TRUE(version.ok());
  EXPECT_EQ(*version, 3);

  // The server's own stores: opening them twice changes nothing.
  for (int pass = 0; pass < 2; ++pass) {
    ASSERT_TRUE(TokenStore::Open(db_).ok());
    ASSERT_TRUE(TenantQuotas::Open(db_, {}).ok());
    ASSERT_TRUE(JobStore::Open(db_).ok());
    CheckpointRegistry::Options ro;
    ro.data_dir = testing::TempDir("reg-data");
    ro.db = db_;
    auto reg = CheckpointRegistry::Create(ro);
    ASSERT_TRUE(reg.ok()) << reg.status();
  }
  EXPECT_EQ(*db_->SchemaVersion("jobs"), 4);
  EXPECT_EQ(*db_->SchemaVersion("registry"), 2);
  EXPECT_EQ(*db_->SchemaVersion("auth"), 1);
}

TEST_P(StoreTest, TokensAndQuotasWrittenByOneReplicaHoldOnAnother) {
  auto a = TokenStore::Open(db_);
  auto b = TokenStore::Open(Connect());
  ASSERT_TRUE(a.ok() && b.ok());
  auto t = (*a)->Create("team-a", Role::kWriter, 0, "pipeline");
  ASSERT_TRUE(t.ok()) << t.status();
  auto p = (*b)->Verify(t->secret);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->tenant, "team-a");
  ASSERT_TRUE((*b)->Revoke(t->record.id).ok());
  EXPECT_EQ((*a)->Verify(t->secret).status().code(),
            absl::StatusCode::kUnauthenticated);

  auto qa = TenantQuotas::Open(db_, {});
  auto qb = TenantQuotas::Open(Connect(), {});
  ASSERT_TRUE(qa.ok() && qb.ok());
  QuotaOverride change;
  change.max_jobs = 5;
  ASSERT_TRUE((*qa)->Set("team-a", change).ok());
  auto q = (*qb)->Get("team-a");
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->max_jobs, 5);
}

TEST_P(StoreTest, RegistryIsSharedPerTenantAndPagesInOrder) {
  const std::string root = testing::TempDir("reg-root");
  testing::WriteModel(root + "/base", {{"w", {{4}, {1, 2, 3, 4}}}});
  CheckpointRegistry::Options ro;
  ro.data_dir = testing::TempDir("reg-data2");
  ro.allowed_roots = {root};
  ro.db = db_;
  auto a = CheckpointRegistry::Create(ro);
  ro.db = Connect();
  auto b = CheckpointRegistry::Create(ro);
  ASSERT_TRUE(a.ok() && b.ok());
  for (const char* name : {"m3", "m1", "m2"}) {
    CheckpointRecord req;
    req.name = name;
    req.role = CheckpointRole::kBase;
    req.path = root + "/base";
    auto r = (*a)->Register("team-a", req);
    ASSERT_TRUE(r.ok()) << r.status();
  }
  CheckpointRecord dup;
  dup.name = "m1";
  dup.role = CheckpointRole::kBase;
  dup.path = root + "/base";
  EXPECT_EQ((*b)->Register("team-a", dup).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ((*b)->Get("team-b", "m1", false).status().code(),
            absl::StatusCode::kNotFound);
  PageRequest page;
  page.size = 2;
  auto first = (*b)->List("team-a", std::nullopt, {}, page);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->items.size(), 2u);
  EXPECT_EQ(first->items[0].name, "m1");
  EXPECT_EQ(first->items[1].name, "m2");
  page.token = first->next_token;
  auto second = (*b)->List("team-a", std::nullopt, {}, page);
  ASSERT_TRUE(second.ok());
  ASSERT_EQ(second->items.size(), 1u);
  EXPECT_EQ(second->items[0].name, "m3");
  ASSERT_TRUE((*b)->Delete("team-a", "m2", false).ok());
  EXPECT_EQ((*a)->Get("team-a", "m2", false).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_P(StoreTest, ThreeReplicasClaimEveryJobExactlyOnce) {
  auto store = Jobs(db_);
  const int kJobs = 30;
  for (int i = 0; i < kJobs; ++i) {
    ASSERT_TRUE(
        store->Put(NewJob(absl::StrCat("job-", i), absl::StrCat("d", i), i))
            .ok());
  }
  EXPECT_EQ(*store->CountQueued(), kJobs);
  std::mutex mu;
  std::vector<std::pair<std::string, std::string>> claims;
  std::vector<std::thread> replicas;
  for (int r = 0; r < 3; ++r) {
    replicas.emplace_back([&, r] {
      auto mine = Jobs(Connect());
      const std::string name = absl::StrCat("replica-", r);
      for (;;) {
        auto c = mine->Claim(name, 30000);
        ASSERT_TRUE(c.ok()) << c.status();
        if (!c->has_value()) break;
        EXPECT_EQ((*c)->state, JobState::kRunning);
        EXPECT_EQ((*c)->replica, name);
        EXPECT_EQ((*c)->attempt, 1);
        std::lock_guard<std::mutex> lock(mu);
        claims.push_back({(*c)->id, name});
      }
    });
  }
  for (auto& t : replicas) t.join();
  std::set<std::string> ids;
  for (const auto& [id, replica] : claims) ids.insert(id);
  EXPECT_EQ(claims.size(), static_cast<size_t>(kJobs));
  EXPECT_EQ(ids.size(), static_cast<size_t>(kJobs));
  EXPECT_EQ(*store->CountQueued(), 0);
  // Oldest first within one replica's view.
  auto j0 = store->GetAny("job-0");
  ASSERT_TRUE(j0.ok());
  EXPECT_EQ(j0->state, JobState::kRunning);
}

TEST_P(StoreTest, TheSameRequestAtTheSameInstantGivesOneJob) {
  std::vector<std::thread> threads;
  std::mutex mu;
  std::set<std::string> answers;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      auto mine = Jobs(Connect());
      std::vector<std::thread> calls;
      for (int i = 0; i < 6; ++i) {
        calls.emplace_back([&, i] {
          auto j = mine->InsertUnlessSame(
              NewJob(absl::StrCat("job-", r, "-", i), "same-digest", NowMs()),
              [](const JobRecord&) { return true; });
          ASSERT_TRUE(j.ok()) << j.status();
          std::lock_guard<std::mutex> lock(mu);
          answers.insert(j->id);
        });
      }
      for (auto& c : calls) c.join();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(answers.size(), 1u);
  auto rows = db_->Query("SELECT COUNT(*) FROM jobs");
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(SqlInt((*rows)[0][0]), 1);
}

TEST_P(StoreTest, ALapsedLeaseRequeuesTheJobAndTheOldReplicaIsFencedOut) {
  auto a = Jobs(db_);
  auto b = Jobs(Connect());
  ASSERT_TRUE(a->Put(NewJob("job-x", "dx", 1)).ok());
  auto first = a->Claim("replica-a", /*lease_ms=*/1);
  ASSERT_TRUE(first.ok() && first->has_value());
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  auto failed = b->RequeueExpired(3);
  ASSERT_TRUE(failed.ok()) << failed.status();
  EXPECT_TRUE(failed->empty());
  auto queued = b->GetAny("job-x");
  ASSERT_TRUE(queued.ok());
  EXPECT_EQ(queued->state, JobState::kQueued);
  EXPECT_THAT(queued->phase, HasSubstr("replica-a"));
  auto second = b->Claim("replica-b", 30000);
  ASSERT_TRUE(second.ok() && second->has_value());
  EXPECT_EQ((*second)->attempt, 2);
  EXPECT_EQ((*second)->replica, "replica-b");

  // Only the holder may rename a result into place.
  EXPECT_TRUE(b->CheckLease("job-x", "replica-b", 2).ok());
  EXPECT_EQ(a->CheckLease("job-x", "replica-a", 1).code(),
            absl::StatusCode::kAborted);
  // Replica A comes back: its heartbeat says lost, its result is refused.
  JobRecord stale = **first;
  stale.tensors_done = 3;
  auto checks = a->Heartbeat("replica-a", {stale}, 30000);
  ASSERT_TRUE(checks.ok()) << checks.status();
  ASSERT_EQ(checks->size(), 1u);
  EXPECT_TRUE((*checks)[0].lost);
  stale.state = JobState::kSucceeded;
  stale.end_ms = NowMs();
  EXPECT_EQ(a->Complete(stale).code(), absl::StatusCode::kAborted);
  // Replica B's progress and outcome are recorded.
  JobRecord live = **second;
  live.tensors_done = 5;
  checks = b->Heartbeat("replica-b", {live}, 30000);
  ASSERT_TRUE(checks.ok());
  EXPECT_FALSE((*checks)[0].lost);
  EXPECT_EQ(a->GetAny("job-x")->tensors_done, 5);
  live.state = JobState::kSucceeded;
  live.tensors_done = 7;
  live.end_ms = NowMs();
  live.files.push_back({"model.safetensors", 64, "ab"});
  ASSERT_TRUE(b->Complete(live).ok());
  auto done = a->GetAny("job-x");
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state, JobState::kSucceeded);
  EXPECT_EQ(done->replica, "replica-b");
  EXPECT_EQ(done->attempt, 2);
  ASSERT_EQ(done->files.size(), 1u);
  EXPECT_EQ(done->files[0].name, "model.safetensors");
}

// Sweeps and evaluations log their partial results; streams on every
// replica read the log, and a later attempt resumes from it.
TEST_P(StoreTest, OnlyTheHolderAppendsToAJobsLogWhichEveryReplicaReads) {
  auto a = Jobs(db_);
  auto b = Jobs(Connect());
  JobRecord j = NewJob("job-s", "ds", 1);
  j.kind = "sweep";
  j.params = R"({"grid":[{"parameter":"lambda","values":[0.5,1.0]}]})";
  ASSERT_TRUE(a->Put(j).ok());
  // Not running yet: nobody may log.
  EXPECT_EQ(a->AppendEvent(j, "x").status().code(), absl::StatusCode::kAborted);
  auto first = a->Claim("replica-a", /*lease_ms=*/1);
  ASSERT_TRUE(first.ok() && first->has_value());
  auto seq = a->AppendEvent(**first, R"({"index":0})");
  ASSERT_TRUE(seq.ok()) << seq.status();
  EXPECT_EQ(*seq, 1);
  // The lease lapses; replica B takes the job over and logs after it.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(b->RequeueExpired(3).ok());
  auto second = b->Claim("replica-b", 30000);
  ASSERT_TRUE(second.ok() && second->has_value());
  EXPECT_EQ((*second)->attempt, 2);
  EXPECT_EQ((*second)->params, j.params);
  auto earlier = b->Events("job-s", 0);
  ASSERT_TRUE(earlier.ok()) << earlier.status();
  ASSERT_EQ(earlier->size(), 1u);
  EXPECT_EQ((*earlier)[0].attempt, 1);
  EXPECT_EQ((*earlier)[0].payload, R"({"index":0})");
  // The replica that lost the lease is fenced out of the log.
  EXPECT_EQ(a->AppendEvent(**first, R"({"index":1})").status().code(),
            absl::StatusCode::kAborted);
  EXPECT_EQ(*b->AppendEvent(**second, R"({"index":1})"), 2);
  EXPECT_EQ(*b->AppendEvent(**second, R"({"index":2})"), 3);
  auto after = a->Events("job-s", 1);
  ASSERT_TRUE(after.ok());
  ASSERT_EQ(after->size(), 2u);
  EXPECT_EQ((*after)[0].seq, 2);
  EXPECT_EQ((*after)[0].attempt, 2);
  EXPECT_EQ((*after)[1].payload, R"({"index":2})");
  // The record says how far the log goes (what followers compare).
  EXPECT_EQ(a->GetAny("job-s")->events, 3);
  JobRecord done = **second;
  done.state = JobState::kSucceeded;
  done.end_ms = NowMs();
  done.result = R"({"best_index":2})";
  ASSERT_TRUE(b->Complete(done).ok());
  EXPECT_EQ(a->AppendEvent(**second, "late").status().code(),
            absl::StatusCode::kAborted);
  EXPECT_EQ(a->Get("team-a", "job-s")->result, done.result);
  // Deleting the job deletes its log.
  ASSERT_TRUE(a->Delete("team-a", "job-s").ok());
  EXPECT_TRUE(b->Events("job-s", 0)->empty());
}

TEST_P(StoreTest, AJobThatKeepsLosingItsReplicaFailsAfterMaxAttempts) {
  auto s = Jobs(db_);
  ASSERT_TRUE(s->Put(NewJob("job-y", "dy", 1)).ok());
  for (int attempt = 1; attempt <= 2; ++attempt) {
    auto c = s->Claim(absl::StrCat("r", attempt), 1);
    ASSERT_TRUE(c.ok() && c->has_value());
    EXPECT_EQ((*c)->attempt, attempt);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    auto failed = s->RequeueExpired(2);
    ASSERT_TRUE(failed.ok());
    EXPECT_EQ(failed->size(), attempt == 2 ? 1u : 0u);
  }
  auto j = s->GetAny("job-y");
  ASSERT_TRUE(j.ok());
  EXPECT_EQ(j->state, JobState::kFailed);
  EXPECT_EQ(j->error_code, static_cast<int>(absl::StatusCode::kAborted));
  EXPECT_THAT(j->error_message, HasSubstr("lost its replica 2 times"));
  EXPECT_THAT(j->error_message, HasSubstr("--max-attempts 2"));
}

TEST_P(StoreTest, ACancelAskedOfADeadReplicasJobEndsItInsteadOfARerun) {
  auto s = Jobs(db_);
  ASSERT_TRUE(s->Put(NewJob("job-c", "dc", 1)).ok());
  auto c = s->Claim("replica-dead", 1);
  ASSERT_TRUE(c.ok() && c->has_value());
  EXPECT_FALSE(s->RequestCancel("team-a", "job-c").value());
  std::this_thread::sleep_for(std::chrono::milliseconds(10));
  auto ended = s->RequeueExpired(3);
  ASSERT_TRUE(ended.ok());
  EXPECT_EQ(ended->size(), 1u);
  auto j = s->GetAny("job-c");
  ASSERT_TRUE(j.ok());
  EXPECT_EQ(j->state, JobState::kCancelled);
  auto next = s->Claim("replica-b", 30000);
  ASSERT_TRUE(next.ok());
  EXPECT_FALSE(next->has_value());
}

TEST_P(StoreTest, DrainingHandsBackAndCancelReachesTheRunningReplica) {
  auto s = Jobs(db_);
  auto other = Jobs(Connect());
  ASSERT_TRUE(s->Put(NewJob("job-q", "dq", 1)).ok());
  ASSERT_TRUE(s->Put(NewJob("job-r", "dr", 2)).ok());
  // Cancelling a queued job ends it at once, from any replica.
  auto now = other->RequestCancel("team-a", "job-q");
  ASSERT_TRUE(now.ok()) << now.status();
  EXPECT_TRUE(*now);
  EXPECT_EQ(s->GetAny("job-q")->state, JobState::kCancelled);
  // A running one is marked; its replica learns it at the next heartbeat.
  auto c = s->Claim("replica-a", 30000);
  ASSERT_TRUE(c.ok() && c->has_value());
  EXPECT_EQ((*c)->id, "job-r");
  EXPECT_EQ(other->RequestCancel("team-b", "job-r").value(), false);
  auto checks = s->Heartbeat("replica-a", {**c}, 30000);
  ASSERT_TRUE(checks.ok());
  EXPECT_FALSE((*checks)[0].cancel_requested) << "another tenant's cancel";
  EXPECT_FALSE(other->RequestCancel("team-a", "job-r").value());
  checks = s->Heartbeat("replica-a", {**c}, 30000);
  ASSERT_TRUE(checks.ok());
  EXPECT_TRUE((*checks)[0].cancel_requested);
  // A replica draining hands back a job someone cancelled meanwhile: the
  // cancel wins, it does not run again.
  ASSERT_TRUE(s->Release("job-r", "replica-a", 1).ok());
  EXPECT_EQ(other->GetAny("job-r")->state, JobState::kCancelled);
  // Handing back (draining) does not use up an attempt.
  ASSERT_TRUE(s->Put(NewJob("job-s", "ds", 3)).ok());
  auto d = s->Claim("replica-a", 30000);
  ASSERT_TRUE(d.ok() && d->has_value());
  EXPECT_EQ((*d)->id, "job-s");
  ASSERT_TRUE(s->Release("job-s", "replica-a", 1).ok());
  auto back = other->GetAny("job-s");
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->state, JobState::kQueued);
  EXPECT_EQ(back->attempt, 0);
  auto again = other->Claim("replica-b", 30000);
  ASSERT_TRUE(again.ok() && again->has_value());
  EXPECT_EQ((*again)->id, "job-s");
  EXPECT_EQ((*again)->attempt, 1);
}

TEST_P(StoreTest, ListsPageAndDeleteAcrossReplicas) {
  auto s = Jobs(db_);
  auto other = Jobs(Connect());
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(
        s->Put(NewJob(absl::StrCat("job-", i), absl::StrCat("d", i), 100 + i))
            .ok());
  }
  PageRequest page;
  page.size = 3;
  auto first = other->List("team-a", std::nullopt, page);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_EQ(first->items.size(), 3u);
  EXPECT_TRUE(first->items[0].config_yaml.empty()) << "summaries";
  page.token = first->next_token;
  auto rest = other->List("team-a", std::nullopt, page);
  ASSERT_TRUE(rest.ok());
  ASSERT_EQ(rest->items.size(), 2u);
  EXPECT_EQ(rest->items[1].id, "job-4");
  auto all = other->List("team-a", JobState::kQueued, {});
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->items.size(), 5u);
  EXPECT_EQ(other->List("team-b", std::nullopt, {})->items.size(), 0u);
  ASSERT_TRUE(other->Delete("team-a", "job-2").ok());
  EXPECT_EQ(s->Delete("team-a", "job-2").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*s->CountActive("team-a"), 4);
}

TEST_P(StoreTest, OtherReplicasHearOfQueuedJobsAndCancelsWithoutPolling) {
  auto listening = Jobs(Connect());
  auto listener = listening->Listen();
  ASSERT_TRUE(listener.ok()) << listener.status();
  if (GetParam() == "sqlite") {
    // One process, nobody to tell: replicas on SQLite poll.
    EXPECT_EQ(*listener, nullptr);
    return;
  }
  ASSERT_NE(*listener, nullptr);
  auto s = Jobs(db_);
  ASSERT_TRUE(
      s->InsertUnlessSame(NewJob("job-n", "dn", 1), [](const JobRecord&) {
         return true;
       }).ok());
  auto claimed = s->Claim("replica-a", 30000);
  ASSERT_TRUE(claimed.ok() && claimed->has_value());
  ASSERT_FALSE(s->RequestCancel("team-a", "job-n").value());
  std::vector<std::string> heard;
  for (int i = 0; i < 20 && heard.size() < 3; ++i) {
    auto got = (*listener)->Wait(std::chrono::milliseconds(100));
    ASSERT_TRUE(got.ok()) << got.status();
    heard.insert(heard.end(), got->begin(), got->end());
  }
  EXPECT_THAT(heard,
              ::testing::ElementsAre("queued", "job:job-n", "cancel:job-n"));
}

INSTANTIATE_TEST_SUITE_P(BothStores, StoreTest,
                         ::testing::Values("sqlite", "postgres"),
                         [](const auto& info) { return info.param; });

// What only one of them needs.
TEST(SqliteUpgradeTest, AJobsTableOfThePreviousReleaseGainsLeases) {
  // The jobs table as release 0.8 (schema v2) left it: a running job (the
  // server died) and a finished one.
  const std::string path = testing::TempDir("upgrade") + "/mergeserve.db";
  {
    auto db = OpenDatabase("sqlite://" + path);
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE((*db)
                    ->ExecScript(R"sql(
CREATE TABLE schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL);
INSERT INTO schema_versions VALUES ('jobs', 2);
CREATE TABLE jobs (id TEXT PRIMARY KEY, state INTEGER NOT NULL,
  config_yaml TEXT NOT NULL, request_digest TEXT NOT NULL,
  create_ms INTEGER NOT NULL, start_ms INTEGER NOT NULL DEFAULT 0,
  end_ms INTEGER NOT NULL DEFAULT 0, tensors_done INTEGER NOT NULL DEFAULT 0,
  tensors_total INTEGER NOT NULL DEFAULT 0,
  error_code INTEGER NOT NULL DEFAULT 0,
  error_message TEXT NOT NULL DEFAULT '', files TEXT NOT NULL DEFAULT '[]',
  result_bytes INTEGER NOT NULL DEFAULT 0, seconds REAL NOT NULL DEFAULT 0,
  result_dir TEXT NOT NULL DEFAULT '', metrics TEXT NOT NULL DEFAULT '{}',
  tenant TEXT NOT NULL DEFAULT 'default', method TEXT NOT NULL DEFAULT '');
INSERT INTO jobs (id, state, config_yaml, request_digest, create_ms,
  tensors_total, method) VALUES ('job-old', 2, 'x', 'd1', 5, 9, 'ties');
INSERT INTO jobs (id, state, config_yaml, request_digest, create_ms,
  result_bytes, method) VALUES ('job-done', 3, 'y', 'd2', 4, 123, 'linear');
)sql")
                    .ok());
  }
  auto db = OpenDatabase("sqlite://" + path);
  ASSERT_TRUE(db.ok());
  auto store = JobStore::Open(*db);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ(*(*db)->SchemaVersion("jobs"), 4);
  auto done = (*store)->GetAny("job-done");
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->state, JobState::kSucceeded);
  EXPECT_EQ(done->result_bytes, 123);
  EXPECT_EQ(done->attempt, 0);
  // The job the old server was running: its replica (unnamed then) is gone,
  // so its lease (none) has lapsed and it runs again.
  auto failed = (*store)->RequeueExpired(3);
  ASSERT_TRUE(failed.ok());
  EXPECT_TRUE(failed->empty());
  auto requeued = (*store)->GetAny("job-old");
  ASSERT_TRUE(requeued.ok());
  EXPECT_EQ(requeued->state, JobState::kQueued);
  auto claimed = (*store)->Claim("replica-a", 30000);
  ASSERT_TRUE(claimed.ok() && claimed->has_value());
  EXPECT_EQ((*claimed)->id, "job-old");
  EXPECT_EQ((*claimed)->attempt, 1);
}

TEST(PostgresUrlTest, APasswordInTheUrlIsRefusedAndNeverEchoed) {
  auto db = OpenDatabase("postgresql://app:s3cret@localhost:5432/mergeserve");
  ASSERT_FALSE(db.ok());
  EXPECT_EQ(db.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(db.status().message(), HasSubstr("PGPASSWORD"));
  EXPECT_THAT(std::string(db.status().message()),
              ::testing::Not(HasSubstr("s3cret")));
  EXPECT_EQ(OpenDatabase("mysql://x/y").status().code(),
            absl::StatusCode::kInvalidArgument);
  // Nothing listens there: UNAVAILABLE naming the place, not the secret.
  auto down = OpenDatabase("postgresql://app@127.0.0.1:1/mergeserve");
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(down.status().message(),
              HasSubstr("postgresql://app@127.0.0.1:1/mergeserve"));
}

TEST(PostgresUrlTest, PlaceholdersBecomeNumberedOutsideQuotes) {
  EXPECT_EQ(PostgresDatabase::Placeholders(
                "SELECT ? WHERE a = '?' AND b = ?2 AND c = ?"),
            "SELECT $1 WHERE a = '?' AND b = $2 AND c = $2");
}

TEST(PostgresServerTest, TheStoreSurvivesTheServerRestartingBetweenCalls) {
  auto pg = testing::PgTestServer::Shared();
  ASSERT_TRUE(pg.ok()) << pg.status();
  auto url = (*pg)->CreateDatabase("restart_test");
  ASSERT_TRUE(url.ok()) << url.status();
  auto db = OpenDatabase(*url);
  ASSERT_TRUE(db.ok()) << db.status();
  auto jobs = JobStore::Open(*db);
  ASSERT_TRUE(jobs.ok());
  // Kill this connection's backend, as a failover or restart would.
  ASSERT_TRUE((*pg)
                  ->Psql("restart_test",
                         "SELECT pg_terminate_backend(pid) FROM "
                         "pg_stat_activity WHERE application_name = "
                         "'mergeserve'")
                  .ok());
  auto n = (*jobs)->CountQueued();
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 0);
}

}  // namespace
}  // namespace mergeserve
