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
#include "cli/merge_command.h"
#include "grpc/merge_server.h"
#include "mergeserve/base/byte_size.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50051", "gRPC address to listen on");
ABSL_FLAG(
    std::string, data_dir, "mergeserve-data",
    "folder for the SQLite registry (mergeserve.db), uploads and results");
ABSL_FLAG(std::vector<std::string>, allow_root, {},
          "folder checkpoints may be registered from (comma-separated or "
          "repeated; the data dir is always allowed)");
ABSL_FLAG(std::string, metrics_listen, "0.0.0.0:9464",
          "address of the Prometheus /metrics endpoint (empty: off)");
ABSL_FLAG(int, workers, 1, "merges that run at once");
ABSL_FLAG(
    int, queue_limit, 16,
    "merges that may wait; beyond it CreateMergeJob is RESOURCE_EXHAUSTED");
ABSL_FLAG(std::string, memory_budget, "0",
          "memory shared by running merges, e.g. 8GiB (0: unlimited)");
ABSL_FLAG(std::string, cache_budget, "1GiB",
          "bytes the task-vector cache (trim thresholds) may hold");
ABSL_FLAG(std::string, device, "cpu",
          "where Fisher, Gram, RI and evaluation run the experts' programs "
          "(cpu, cuda, cuda:N where LibTorch has CUDA)");
ABSL_FLAG(int, grace_seconds, 30,
          "on SIGTERM/SIGINT, how long running calls may take to finish");

namespace mergeserve {

int RunServeCommand(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "mergeserve serve [--listen ADDR] [--data-dir DIR] [--allow-root "
      "DIR]...\n"
      "Runs the gRPC merge service (RegistryService, grpc.health.v1.Health,\n"
      "server reflection). SIGTERM drains: health goes NOT_SERVING, new calls\n"
      "are refused and running ones get --grace-seconds to finish.");
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
  o.workers = absl::GetFlag(FLAGS_workers);
  o.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  o.queue_limit = absl::GetFlag(FLAGS_queue_limit);
  auto budget = ParseByteSize(absl::GetFlag(FLAGS_memory_budget));
  if (!budget.ok()) {
    std::fprintf(stderr, "mergeserve serve: --memory-budget: %s\n",
                 std::string(budget.status().message()).c_str());
    return 2;
  }
  o.memory_budget = *budget;
  auto cache = ParseByteSize(absl::GetFlag(FLAGS_cache_budget));
  if (!cache.ok()) {
    std::fprintf(stderr, "mergeserve serve: --cache-budget: %s\n",
                 std::string(cache.status().message()).c_str());
    return 2;
  }
  o.cache_budget = *cache;
  o.device = absl::GetFlag(FLAGS_device);
  auto server = MergeServer::Start(o);
  if (!server.ok()) {
    std::fprintf(stderr, "mergeserve serve: %s\n",
                 std::string(server.status().message()).c_str());
    return ExitCodeFor(static_cast<int>(server.status().code()));
  }
  std::printf("mergeserve: serving on port %d, metrics on port %d (data %s)\n",
              (*server)->port(), (*server)->metrics_port(),
              (*server)->registry().data_dir().c_str());
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
