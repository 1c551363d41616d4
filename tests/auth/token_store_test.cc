// API tokens: shown once, stored as hashes, verified, expired and revoked.
#include "mergeserve/auth/token_store.h"

#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "mergeserve/auth/tenant_quotas.h"
#include "mergeserve/base/clock.h"
#include "mergeserve/store/sqlite_database.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using ::testing::HasSubstr;

class TokenStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = testing::TempDir("tokens") + "/mergeserve.db";
    auto db = SqliteDatabase::Open(path_);
    ASSERT_TRUE(db.ok());
    db_ = std::shared_ptr<Database>(*std::move(db));
    auto s = TokenStore::Open(db_);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = std::move(*s);
  }
  std::string path_;
  std::shared_ptr<Database> db_;
  std::unique_ptr<TokenStore> store_;
};

TEST_F(TokenStoreTest, ATokenVerifiesAsItsTenantAndRoleAndIsStoredHashed) {
  auto t = store_->Create("team-a", Role::kWriter, 0, "pipeline");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(t->secret,
              ::testing::MatchesRegex("mst_[0-9a-f]{12}_[0-9a-f]{64}"));
  EXPECT_EQ(t->record.id, "tok_" + t->secret.substr(4, 12));
  auto p = store_->Verify(t->secret);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->tenant, "team-a");
  EXPECT_EQ(p->role, Role::kWriter);
  EXPECT_EQ(p->token_id, t->record.id);
  // Only a hash of the secret is in the database.
  auto rows = db_->Query("SELECT * FROM tokens");
  ASSERT_TRUE(rows.ok());
  for (const SqlRow& r : *rows) {
    for (const SqlValue& v : r) {
      EXPECT_EQ(SqlString(v).find(t->secret.substr(17)), std::string::npos);
    }
  }
  // Two tokens never share a secret.
  auto u = store_->Create("team-a", Role::kWriter, 0, "");
  EXPECT_NE(u->secret, t->secret);
}

TEST_F(TokenStoreTest, WrongMalformedExpiredAndRevokedTokensAreRefused) {
  auto t = store_->Create("a", Role::kAdmin, 0, "");
  ASSERT_TRUE(t.ok());
  std::string wrong = t->secret;
  wrong.back() = wrong.back() == '0' ? '1' : '0';
  for (const std::string& bad :
       {wrong, std::string("Bearer x"), std::string(""),
        std::string("mst_") + std::string(200, 'f'),
        t->secret.substr(0, t->secret.size() - 1),
        std::string("MST_") + t->secret.substr(4)}) {
    auto p = store_->Verify(bad);
    EXPECT_EQ(p.status().code(), absl::StatusCode::kUnauthenticated) << bad;
  }
  auto e = store_->Create("a", Role::kAdmin, 1, "");  // 1 ms
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_THAT(std::string(store_->Verify(e->secret).status().message()),
              HasSubstr("expired"));
  ASSERT_TRUE(store_->Revoke(t->record.id).ok());
  auto revoked = store_->Verify(t->secret);
  EXPECT_EQ(revoked.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(revoked.status().message()), HasSubstr("revoked"));
  EXPECT_EQ(store_->Revoke("tok_nope").status().code(),
            absl::StatusCode::kNotFound);
  // Listing shows both, the revoked one as revoked. (Both may be created in
  // the same millisecond, so the test does not rely on their order.)
  auto all = store_->List("a");
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  for (const auto& r : *all) {
    EXPECT_EQ(r.revoke_ms != 0, r.id == t->record.id) << r.id;
  }
}

TEST_F(TokenStoreTest, ImportedTokensVerifyAndImportIsIdempotent) {
  const std::string token = "mst_0123456789ab_" + std::string(64, 'c');
  auto t = store_->Import(token, "ops", Role::kAdmin, "k8s secret");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->id, "tok_0123456789ab");
  EXPECT_EQ(store_->Verify(token)->role, Role::kAdmin);
  EXPECT_TRUE(store_->Import(token, "ops", Role::kAdmin, "").ok());
  const std::string other = "mst_0123456789ab_" + std::string(64, 'd');
  EXPECT_EQ(store_->Import(other, "ops", Role::kAdmin, "").status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(
      store_->Import("mst_short", "ops", Role::kAdmin, "").status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST_F(TokenStoreTest, TenantsRolesAndDurationsAreValidated) {
  EXPECT_EQ(store_->Create("bad tenant", Role::kReader, 0, "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Create(std::string(65, 't'), Role::kReader, 0, "")
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  // Durations are parsed by ParseDurationMs (clock_test); the store bounds
  // what it is given, so that create time plus expiry cannot overflow.
  EXPECT_EQ(store_->Create("ops", Role::kReader, -1, "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->Create("ops", Role::kReader, kMaxDurationMs + 1, "")
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  auto longest = store_->Create("ops", Role::kReader, kMaxDurationMs, "");
  ASSERT_TRUE(longest.ok()) << longest.status();
  EXPECT_EQ(longest->record.expire_ms - longest->record.create_ms,
            kMaxDurationMs);
  EXPECT_EQ(RoleFromName("writer"), Role::kWriter);
  EXPECT_FALSE(RoleFromName("root").has_value());
}

TEST_F(TokenStoreTest, QuotasTakeDefaultsAndPerTenantOverrides) {
  Quota defaults;
  defaults.max_jobs = 5;
  defaults.max_streams = 3;
  auto q = TenantQuotas::Open(db_, defaults);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ((*q)->Get("a")->max_jobs, 5);
  QuotaOverride o;
  o.max_jobs = 1;
  o.max_stored_bytes = 1000;
  auto set = (*q)->Set("a", o);
  ASSERT_TRUE(set.ok());
  EXPECT_EQ(set->max_jobs, 1);
  EXPECT_EQ(set->max_streams, 3);  // untouched: the default
  EXPECT_EQ((*q)->Get("b")->max_jobs, 5);
  absl::Status over = CheckQuota("a", "max_stored_bytes", 1000, 900, 200);
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(over.message()), HasSubstr("max_stored_bytes"));
  EXPECT_TRUE(CheckQuota("a", "max_jobs", 0, 1000, 1).ok());  // 0: none
  o = {};
  o.max_jobs = -1;
  EXPECT_EQ((*q)->Set("a", o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mergeserve
