#include "pg_test_server.h"

#include <glob.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>

#include "absl/strings/str_cat.h"

namespace mergeserve::testing {
namespace fs = std::filesystem;
namespace {

std::string FindBinDir() {
  if (const char* env = std::getenv("MERGESERVE_PG_BIN")) return env;
  glob_t g;
  std::string found;
  if (::glob("/usr/lib/postgresql/*/bin/pg_ctl", 0, nullptr, &g) == 0 &&
      g.gl_pathc > 0) {
    found = fs::path(g.gl_pathv[g.gl_pathc - 1]).parent_path().string();
  }
  globfree(&g);
  return found;
}

std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace

std::string PgTestServer::Run(const std::string& command) const {
  const std::string full =
      as_postgres_ ? absl::StrCat("runuser -u postgres -- sh -c ",
                                  Quote(command), " 2>&1")
                   : absl::StrCat("sh -c ", Quote(command), " 2>&1");
  std::string out;
  FILE* p = ::popen(full.c_str(), "r");
  if (p == nullptr) return "popen failed";
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int rc = ::pclose(p);
  if (rc != 0)
    out = absl::StrCat("exit ", rc, ": ", out);
  else
    out.clear();
  return out;
}

absl::StatusOr<std::unique_ptr<PgTestServer>> PgTestServer::Start() {
  std::unique_ptr<PgTestServer> s(new PgTestServer());
  s->bin_ = FindBinDir();
  if (s->bin_.empty()) {
    return absl::FailedPreconditionError(
        "no PostgreSQL server binaries (install Debian's postgresql)");
  }
  char tmpl[] = "/tmp/mergeserve-pg-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return absl::InternalError("mkdtemp");
  s->dir_ = tmpl;
  if (::geteuid() == 0) {
    struct passwd* pw = ::getpwnam("postgres");
    if (pw == nullptr) {
      return absl::FailedPreconditionError(
          "running as root and there is no postgres user to run the server");
    }
    s->as_postgres_ = true;
    if (::chown(s->dir_.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
      return absl::InternalError("chown " + s->dir_);
    }
  }
  std::random_device rd;
  s->port_ = 20000 + static_cast<int>(rd() % 20000);
  std::string err = s->Run(absl::StrCat(
      s->bin_, "/initdb -D ", s->dir_, "/data -U postgres --auth=trust ",
      "--no-sync --locale=C -E UTF8 >/dev/null"));
  if (!err.empty()) return absl::InternalError("initdb: " + err);
  // Unix socket only; fsync off: test data need not survive a power cut.
  err = s->Run(absl::StrCat(
      s->bin_, "/pg_ctl -D ", s->dir_, "/data -l ", s->dir_,
      "/server.log -w -t 60 -o \"-k ", s->dir_, " -p ", s->port_,
      " -c listen_addresses='' -c fsync=off -c max_connections=200\" start",
      " >/dev/null"));
  if (!err.empty()) return absl::InternalError("pg_ctl start: " + err);
  s->started_ = true;
  return s;
}

absl::StatusOr<PgTestServer*> PgTestServer::Shared() {
  static auto* server =
      new absl::StatusOr<std::unique_ptr<PgTestServer>>(Start());
  static bool registered = [] {
    std::atexit([] {
      delete server;  // stops it
    });
    return true;
  }();
  (void)registered;
  if (!server->ok()) return server->status();
  return server->value().get();
}

PgTestServer::~PgTestServer() {
  if (started_) {
    Run(absl::StrCat(bin_, "/pg_ctl -D ", dir_, "/data -m immediate -w stop",
                     " >/dev/null"));
  }
  std::error_code ec;
  if (!dir_.empty()) fs::remove_all(dir_, ec);
}

absl::Status PgTestServer::Psql(const std::string& db, const std::string& sql) {
  const std::string err = Run(absl::StrCat(
      bin_, "/psql -X -q -v ON_ERROR_STOP=1 -h ", dir_, " -p ", port_,
      " -U postgres -d ", db, " -c ", Quote(sql), " >/dev/null"));
  if (!err.empty()) return absl::InternalError("psql: " + err);
  return absl::OkStatus();
}

absl::StatusOr<std::string> PgTestServer::CreateDatabase(
    const std::string& name) {
  absl::Status s = Psql("postgres", absl::StrCat("CREATE DATABASE ", name));
  if (!s.ok()) return s;
  return absl::StrCat("postgresql://postgres@/", name, "?host=", dir_,
                      "&port=", port_);
}

}  // namespace mergeserve::testing
