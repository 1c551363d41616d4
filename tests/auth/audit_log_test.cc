#include "mergeserve/auth/audit_log.h"

#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "test_util.h"

namespace mergeserve {
namespace {

std::vector<std::string> Lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST(AuditLogTest, OneJsonLinePerCallWithWhoWhatAndOutcome) {
  const std::string path = testing::TempDir("audit") + "/audit.log";
  auto log = AuditLog::Open(path);
  ASSERT_TRUE(log.ok()) << log.status();
  EXPECT_EQ((*log)->path(), path);
  (*log)->Record({"teamA", "tok_0123456789ab", "ipv4:10.0.0.7:5555",
                  "mergeserve.v1.MergeService/CreateMergeJob", "jobs/job-1a2b",
                  "OK", ""});
  // A client-chosen name with quotes, a newline and invalid UTF-8 stays one
  // line of valid JSON.
  (*log)->Record({"teamB", "", "ipv4:10.0.0.8:1", "x/Delete",
                  "checkpoints/a\"b\nc\xff", "PERMISSION_DENIED",
                  "denied:\n\"no\""});
  const std::vector<std::string> lines = Lines(path);
  ASSERT_EQ(lines.size(), 2u);
  const auto first = nlohmann::json::parse(lines[0]);
  EXPECT_EQ(first["tenant"], "teamA");
  EXPECT_EQ(first["token_id"], "tok_0123456789ab");
  EXPECT_EQ(first["peer"], "ipv4:10.0.0.7:5555");
  EXPECT_EQ(first["method"], "mergeserve.v1.MergeService/CreateMergeJob");
  EXPECT_EQ(first["resource"], "jobs/job-1a2b");
  EXPECT_EQ(first["code"], "OK");
  EXPECT_FALSE(first.contains("message"));                // only for errors
  EXPECT_EQ(first["ts"].get<std::string>().size(), 24u);  // ...T..:..:..123Z
  const auto second = nlohmann::json::parse(lines[1]);
  EXPECT_EQ(second["code"], "PERMISSION_DENIED");
  EXPECT_EQ(second["message"], "denied:\n\"no\"");
  EXPECT_EQ(second["resource"], "checkpoints/a\"b\nc\xef\xbf\xbd");  // U+FFFD
}

// O_APPEND and one write per line: a reopened log (a restart) keeps what
// was there, and concurrent calls never interleave within a line.
TEST(AuditLogTest, AppendsAcrossRestartsAndNeverInterleaves) {
  const std::string path = testing::TempDir("audit_append") + "/audit.log";
  {
    auto log = AuditLog::Open(path);
    ASSERT_TRUE(log.ok());
    (*log)->Record({"t", "", "", "m", "r", "OK", ""});
  }
  auto log = AuditLog::Open(path);
  ASSERT_TRUE(log.ok());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 250; ++i) {
        (*log)->Record({"tenant" + std::to_string(t), "", "", "m",
                        std::string(500, static_cast<char>('a' + t)), "OK",
                        ""});
      }
    });
  }
  for (auto& th : threads) th.join();
  const std::vector<std::string> lines = Lines(path);
  ASSERT_EQ(lines.size(), 1001u);
  for (size_t i = 1; i < lines.size(); ++i) {
    const auto j = nlohmann::json::parse(lines[i]);
    const std::string tenant = j["tenant"];
    const char c = static_cast<char>('a' + (tenant.back() - '0'));
    ASSERT_EQ(j["resource"], std::string(500, c)) << "line " << i;
  }
}

TEST(AuditLogTest, AnUnwritablePathFailsAtOpenNamingIt) {
  const std::string dir = testing::TempDir("audit_missing");
  auto log = AuditLog::Open(dir + "/no/such/dir/audit.log");
  EXPECT_EQ(log.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(log.status().message().find("no/such/dir/audit.log"),
            std::string::npos);
  auto stderr_log = AuditLog::Open("");
  ASSERT_TRUE(stderr_log.ok());
  EXPECT_EQ((*stderr_log)->path(), "-");
}

}  // namespace
}  // namespace mergeserve
