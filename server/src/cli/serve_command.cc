#include "cli/serve_command.h"

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "engine/aten_module.h"
#include "grpc/merge_server.h"
#include "mergeserve/auth/token_store.h"
#include "mergeserve/base/byte_size.h"
#include "mergeserve/base/exit_codes.h"
#include "mergeserve/base/system_memory.h"

ABSL_FLAG(std::string, listen, "",
          "gRPC address (default 127.0.0.1:50051; 0.0.0.0:50051 with "
          "--auth token)");
ABSL_FLAG(std::string, data_dir, "mergeserve-data",
          "folder for the SQLite database (mergeserve.db), uploads, results "
          "and the audit log");
ABSL_FLAG(std::string, database, "",
          "the store: sqlite:///path (default: DATA_DIR/mergeserve.db, one "
          "replica) or postgresql://user@host:port/db (libpq URI, "
          "?host=/socket/dir works) that several replicas share; the "
          "password comes from $PGPASSWORD, ~/.pgpass or "
          "--database-password-file, never the URL");
ABSL_FLAG(std::string, database_password_file, "",
          "file whose first line is the database password (e.g. a mounted "
          "Secret)");
ABSL_FLAG(std::string, replica_id, "",
          "this replica's name in job records (default: the host name)");
ABSL_FLAG(int, lease_seconds, 30,
          "a running job's lease: renewed by heartbeats; when it lapses "
          "(the replica died) another replica takes the job over");
ABSL_FLAG(int, max_attempts, 3,
          "times a job may lose its replica before it fails");
ABSL_FLAG(bool, check, false,
          "validate the flags, connect to the database, apply its "
          "migrations and exit (0: ready to serve)");
ABSL_FLAG(std::vector<std::string>, allow_root, {},
          "folder clients may register checkpoints and datasets from "
          "(repeatable; never the data dir, which only holds uploads)");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464",
          "address of the Prometheus /metrics endpoint (empty: off)");
ABSL_FLAG(int, workers, 1,
          "merges, analyses, evaluations and sweeps that run at once");
ABSL_FLAG(int, queue_limit, 16,
          "work items that may wait; beyond it calls are RESOURCE_EXHAUSTED");
ABSL_FLAG(std::string, memory_budget, "auto",
          "memory shared by running work, e.g. 8GiB; auto: half of the "
          "container's limit (or the RAM); 0: unlimited");
ABSL_FLAG(std::string, cache_budget, "1GiB",
          "bytes the task-vector cache (trim thresholds) may hold");
ABSL_FLAG(std::string, device, "cpu",
          "where Fisher, Gram, RI and evaluation run the experts' programs "
          "(cpu, cuda, cuda:N where LibTorch has CUDA)");
ABSL_FLAG(int, grace_seconds, 30,
          "on SIGTERM/SIGINT, how long running work and calls may take to "
          "finish");
ABSL_FLAG(
    std::string, auth, "none",
    "none (development mode: loopback only, every caller is an admin of "
    "tenant 'default') or token (bearer tokens: mergeserve token create)");
ABSL_FLAG(std::string, tls_cert, "", "server certificate chain (PEM)");
ABSL_FLAG(std::string, tls_key, "", "its private key (PEM)");
ABSL_FLAG(std::string, tls_client_ca, "",
          "CA bundle (PEM): clients must present a certificate it signed "
          "(mutual TLS)");
ABSL_FLAG(int, tls_refresh_seconds, 60,
          "how often the TLS files are re-read (rotation without restart)");
ABSL_FLAG(bool, insecure, false,
          "serve off loopback without TLS and tokens (e.g. behind a mesh "
          "that terminates TLS)");
ABSL_FLAG(std::string, audit_log, "",
          "JSON-lines audit log of mutating and denied calls (default "
          "DATA_DIR/audit.log; - for stderr)");
ABSL_FLAG(std::string, job_retention, "30d",
          "finished jobs older than this are deleted with their results (0: "
          "keep them)");
ABSL_FLAG(int, upload_idle_seconds, 60,
          "an upload that sends nothing for this long is ended");
ABSL_FLAG(int, max_upload_files, 1024, "files one upload may carry");
ABSL_FLAG(std::string, max_upload_bytes, "1TiB", "bytes one upload may carry");
ABSL_FLAG(int, quota_jobs, 64,
          "default per-tenant limit of queued + running jobs (0: none)");
ABSL_FLAG(std::string, quota_stored_bytes, "0",
          "default per-tenant limit of stored uploads and results (0: none)");
ABSL_FLAG(std::string, quota_upload_bytes, "0",
          "default per-tenant limit of one upload (0: --max-upload-bytes)");
ABSL_FLAG(int, quota_streams, 32,
          "default per-tenant limit of streaming calls open at once (0: none)");
ABSL_FLAG(std::string, max_config_bytes, "1MiB",
          "largest merge config a request may carry");
ABSL_FLAG(int, max_models, 128, "most model entries one merge may name");

namespace mergeserve {
namespace {

int Usage(const std::string& msg) {
  std::fprintf(stderr, "mergeserve serve: %s\n", msg.c_str());
  return 2;
}

}  // namespace

int RunServeCommand(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "mergeserve serve [--auth token --tls-cert F --tls-key F] "
      "[--listen ADDR] [--data-dir DIR] [--allow-root DIR]...\n"
      "Runs the gRPC merge service (RegistryService, MergeService,\n"
      "AdminService, grpc.health.v1.Health, authenticated reflection).\n"
      "Without --auth token it is a development server on loopback.\n"
      "SIGTERM drains: health goes NOT_SERVING, new work is refused and\n"
      "running work gets --grace-seconds to finish.");
  // Flags are spelled with dashes (--data-dir); absl names use '_'.
  std::vector<std::string> storage;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) == 0) {
      const size_t end = std::min(a.find('='), a.size());
      for (size_t j = 2; j < end; ++j) {
        if (a[j] == '-') a[j] = '_';
      }
    }
    storage.push_back(a);
  }
  // Repeated --allow-root flags accumulate (absl keeps only the last).
  std::vector<std::string> roots;
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    const std::string& a = storage[static_cast<size_t>(i)];
    if (a == "--allow_root") {
      if (i + 1 < argc) roots.push_back(storage[static_cast<size_t>(++i)]);
      continue;
    }
    if (a.rfind("--allow_root=", 0) == 0) {
      roots.push_back(a.substr(a.find('=') + 1));
      continue;
    }
    args.push_back(storage[static_cast<size_t>(i)].data());
  }
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  for (const auto& r : absl::GetFlag(FLAGS_allow_root)) roots.push_back(r);

  // Block the stop signals in every thread; the main thread waits for them.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  MergeServer::Options o;
  o.listen = absl::GetFlag(FLAGS_listen);
  o.data_dir = absl::GetFlag(FLAGS_data_dir);
  o.allowed_roots = roots;
  o.database = absl::GetFlag(FLAGS_database);
  o.database_options.password_file =
      absl::GetFlag(FLAGS_database_password_file);
  o.replica_id = absl::GetFlag(FLAGS_replica_id);
  if (absl::GetFlag(FLAGS_lease_seconds) < 2) {
    return Usage("--lease-seconds must be at least 2");
  }
  o.lease_ms = int64_t{1000} * absl::GetFlag(FLAGS_lease_seconds);
  if (absl::GetFlag(FLAGS_max_attempts) < 1) {
    return Usage("--max-attempts must be at least 1");
  }
  o.max_attempts = absl::GetFlag(FLAGS_max_attempts);
  o.workers = absl::GetFlag(FLAGS_workers);
  o.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  o.queue_limit = absl::GetFlag(FLAGS_queue_limit);
  const std::string budget_flag = absl::GetFlag(FLAGS_memory_budget);
  if (budget_flag == "auto") {
    o.memory_budget = UsableMemoryBytes() / 2;
  } else {
    auto budget = ParseByteSize(budget_flag);
    if (!budget.ok()) {
      return Usage(
          absl::StrCat("--memory-budget: ", budget.status().message()));
    }
    o.memory_budget = *budget;
  }
  auto cache = ParseByteSize(absl::GetFlag(FLAGS_cache_budget));
  if (!cache.ok()) {
    return Usage(absl::StrCat("--cache-budget: ", cache.status().message()));
  }
  o.cache_budget = *cache;
  o.device = absl::GetFlag(FLAGS_device);
  const std::string auth = absl::GetFlag(FLAGS_auth);
  if (auth != "none" && auth != "token") {
    return Usage("--auth must be none or token");
  }
  o.auth_tokens = auth == "token";
  o.tls.cert = absl::GetFlag(FLAGS_tls_cert);
  o.tls.key = absl::GetFlag(FLAGS_tls_key);
  o.tls.client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  o.tls.refresh_seconds = absl::GetFlag(FLAGS_tls_refresh_seconds);
  o.insecure = absl::GetFlag(FLAGS_insecure);
  o.audit_log = absl::GetFlag(FLAGS_audit_log);
  auto retention = ParseDurationMs(absl::GetFlag(FLAGS_job_retention));
  if (!retention.ok()) {
    return Usage(
        absl::StrCat("--job-retention: ", retention.status().message()));
  }
  o.job_retention_ms = *retention;
  o.uploads.idle_timeout = std::chrono::milliseconds(
      int64_t{1000} * std::max(1, absl::GetFlag(FLAGS_upload_idle_seconds)));
  o.uploads.max_files = absl::GetFlag(FLAGS_max_upload_files);
  auto upload_bytes = ParseByteSize(absl::GetFlag(FLAGS_max_upload_bytes));
  auto stored = ParseByteSize(absl::GetFlag(FLAGS_quota_stored_bytes));
  auto upload_quota = ParseByteSize(absl::GetFlag(FLAGS_quota_upload_bytes));
  auto config_bytes = ParseByteSize(absl::GetFlag(FLAGS_max_config_bytes));
  for (const auto* v : {&upload_bytes, &stored, &upload_quota, &config_bytes}) {
    if (!v->ok()) return Usage(std::string(v->status().message()));
  }
  o.uploads.max_bytes = *upload_bytes;
  o.default_quota.max_jobs = absl::GetFlag(FLAGS_quota_jobs);
  o.default_quota.max_stored_bytes = *stored;
  o.default_quota.max_upload_bytes = *upload_quota;
  o.default_quota.max_streams = absl::GetFlag(FLAGS_quota_streams);
  o.config_limits.max_text_bytes = static_cast<size_t>(*config_bytes);
  o.config_limits.max_models =
      static_cast<size_t>(std::max(1, absl::GetFlag(FLAGS_max_models)));

  // LibTorch (ATen methods, evaluation, the data-aware steps) is loaded now
  // rather than under the first job that needs it: a missing module stops
  // the server here, and no job waits for the load.
  if (auto aten =
          AtenTable("engine", "the server's ATen methods and evaluation");
      !aten.ok()) {
    std::fprintf(stderr, "mergeserve serve: %s\n",
                 std::string(aten.status().message()).c_str());
    return ExitCodeFor(aten.status().code());
  }
  if (absl::GetFlag(FLAGS_check)) {
    auto checked = MergeServer::Check(o);
    if (!checked.ok()) {
      std::fprintf(stderr, "mergeserve serve --check: %s\n",
                   std::string(checked.status().message()).c_str());
      return ExitCodeFor(checked.status().code());
    }
    std::printf("mergeserve serve --check: ok: %s\n", checked->c_str());
    return 0;
  }
  auto server = MergeServer::Start(o);
  if (!server.ok()) {
    std::fprintf(stderr, "mergeserve serve: %s\n",
                 std::string(server.status().message()).c_str());
    return ExitCodeFor(server.status().code());
  }
  if (!(*server)->degraded().empty()) {
    std::printf("mergeserve: NOT SERVING on port %d: %s\n", (*server)->port(),
                (*server)->degraded().c_str());
  } else {
    std::printf(
        "mergeserve: serving on %s (port %d), mode %s%s; metrics on port %d; "
        "data %s; database %s; replica %s; memory budget %s\n",
        (*server)->listen().c_str(), (*server)->port(),
        (*server)->mode().c_str(), o.auth_tokens ? "" : ", loopback only",
        (*server)->metrics_port(), (*server)->data_dir().c_str(),
        (*server)->database().c_str(), (*server)->replica_id().c_str(),
        o.memory_budget > 0 ? FormatBytes(o.memory_budget).c_str()
                            : "unlimited");
  }
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop, &sig);
  std::printf("mergeserve: %s, draining\n",
              sig == SIGTERM ? "SIGTERM" : "SIGINT");
  std::fflush(stdout);
  (*server)->Shutdown(std::chrono::seconds(absl::GetFlag(FLAGS_grace_seconds)));
  std::printf("mergeserve: stopped\n");
  return 0;
}

}  // namespace mergeserve
