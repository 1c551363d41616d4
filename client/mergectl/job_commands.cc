// mergectl verbs for merge jobs: merge, jobs, watch, cancel, download.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "cli.h"
#include "mergeserve/base/sha256.h"
#include "mergeserve/ui/progress_bar.h"
#include "mergeserve/v1/merge.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace mergectl {
namespace fs = std::filesystem;
namespace {

using mergeserve::v1::JobState;
using mergeserve::v1::MergeJob;
using mergeserve::v1::MergeService;

std::string StateName(JobState s) {
  switch (s) {
    case mergeserve::v1::JOB_STATE_QUEUED:
      return "QUEUED";
    case mergeserve::v1::JOB_STATE_RUNNING:
      return "RUNNING";
    case mergeserve::v1::JOB_STATE_SUCCEEDED:
      return "SUCCEEDED";
    case mergeserve::v1::JOB_STATE_FAILED:
      return "FAILED";
    case mergeserve::v1::JOB_STATE_CANCELLED:
      return "CANCELLED";
    default:
      return "?";
  }
}

bool Final(JobState s) {
  return s == mergeserve::v1::JOB_STATE_SUCCEEDED ||
         s == mergeserve::v1::JOB_STATE_FAILED ||
         s == mergeserve::v1::JOB_STATE_CANCELLED;
}

std::string MethodOf(const MergeJob& j) {
  return j.method().empty() ? "?" : j.method();
}

nlohmann::json ToJson(const MergeJob& j) {
  nlohmann::json files = nlohmann::json::array();
  for (const auto& f : j.files()) {
    files.push_back({{"name", f.name()},
                     {"size_bytes", f.size_bytes()},
                     {"sha256", f.sha256()}});
  }
  return {{"id", j.id()},
          {"tenant", j.tenant()},
          {"state", StateName(j.state())},
          {"method", MethodOf(j)},
          {"request_digest", j.request_digest()},
          {"tensors_done", j.tensors_done()},
          {"tensors_total", j.tensors_total()},
          {"error_code", j.error_code()},
          {"error_message", j.error_message()},
          {"files", files},
          {"result_bytes", j.result_bytes()},
          {"seconds", j.seconds()},
          {"phase", j.phase()},
          {"kind", j.kind()},
          {"replica", j.replica()},
          {"attempt", j.attempt()},
          {"metrics", std::map<std::string, double>(j.metrics().begin(),
                                                    j.metrics().end())}};
}

// Exit code for a finished job: 0 if it succeeded, else its failure kind.
int JobExit(const MergeJob& j) {
  if (j.state() == mergeserve::v1::JOB_STATE_SUCCEEDED) return 0;
  return ExitCode(grpc::Status(static_cast<grpc::StatusCode>(j.error_code()),
                               j.error_message()));
}

// Follows a job until it ends; prints progress unless json. Returns the last
// record through `last`.
int Watch(MergeService::Stub& stub, const std::string& id, const Args& args,
          MergeJob* last) {
  mergeserve::ProgressBar bar(stderr, "merging " + id);
  JobState shown = mergeserve::v1::JOB_STATE_UNSPECIFIED;
  grpc::Status s;
  // A stream that breaks because its replica went away is opened again
  // (on another replica): the first event is the job as it is now.
  for (int reconnects = 0;; ++reconnects) {
    grpc::ClientContext ctx;
    mergeserve::v1::WatchMergeJobRequest req;
    req.set_id(id);
    auto reader = stub.WatchMergeJob(&ctx, req);
    mergeserve::v1::JobEvent ev;
    while (reader->Read(&ev)) {
      *last = ev.job();
      if (args.json) {
        std::cout << ToJson(ev.job()).dump() << std::endl;
        continue;
      }
      if (ev.job().state() != shown && !Interactive()) {
        shown = ev.job().state();
        std::fprintf(stderr, "%s: %s\n", id.c_str(), StateName(shown).c_str());
      }
      if (ev.job().state() == mergeserve::v1::JOB_STATE_RUNNING) {
        const auto& job = ev.job();
        if (!job.phase().empty() && job.phase() != "merge") {
          bar.Update(job.phase_done(), job.phase_total(), job.phase());
        } else {
          bar.Update(job.tensors_done(), job.tensors_total(), "tensors");
        }
      }
    }
    s = reader->Finish();
    if (s.error_code() != grpc::StatusCode::UNAVAILABLE || reconnects >= 10) {
      break;
    }
    std::this_thread::sleep_for(
        std::chrono::milliseconds(200 << std::min(reconnects, 4)));
  }
  bar.Finish();
  if (!s.ok()) return Fail(s, args.server);
  if (!args.json) {
    if (last->state() == mergeserve::v1::JOB_STATE_SUCCEEDED) {
      std::printf("%s SUCCEEDED in %.2f s: %d files, %s\n", id.c_str(),
                  last->seconds(), last->files_size(),
                  HumanBytes(last->result_bytes()).c_str());
      for (const auto& [k, v] : last->metrics()) {
        std::printf("  %s = %.6g\n", k.c_str(), v);
      }
    } else {
      std::printf("%s %s: %s\n", id.c_str(), StateName(last->state()).c_str(),
                  last->error_message().c_str());
    }
  }
  return JobExit(*last);
}

// Downloads every result file into DIR: files go to DIR.partial first (a
// rerun resumes each file from what is already there), are checked against
// their SHA-256, and the folder is renamed into place at the end.
int Download(MergeService::Stub& stub, const MergeJob& job,
             const std::string& dir, const Args& args) {
  if (job.state() != mergeserve::v1::JOB_STATE_SUCCEEDED) {
    std::fprintf(stderr, "mergectl: job %s has no result (%s)\n",
                 job.id().c_str(), StateName(job.state()).c_str());
    return 7;
  }
  std::error_code ec;
  if (fs::exists(dir, ec) && !fs::is_empty(dir, ec)) {
    std::fprintf(stderr, "mergectl: %s exists and is not empty\n", dir.c_str());
    return 5;
  }
  const std::string partial = dir + ".partial";
  fs::create_directories(partial, ec);
  mergeserve::ProgressBar bar(stderr, "downloading " + job.id());
  int64_t done = 0;
  const int64_t total = job.result_bytes();
  for (const auto& f : job.files()) {
    const std::string path = partial + "/" + f.name();
    int64_t have = fs::exists(path, ec)
                       ? static_cast<int64_t>(fs::file_size(path, ec))
                       : 0;
    if (have > f.size_bytes()) {
      fs::remove(path, ec);
      have = 0;
    }
    for (int reconnects = 0; have < f.size_bytes() || !fs::exists(path, ec);
         ++reconnects) {
      std::ofstream out(path, std::ios::binary | std::ios::app);
      grpc::ClientContext ctx;
      mergeserve::v1::DownloadMergeResultRequest req;
      req.set_id(job.id());
      req.set_file(f.name());
      req.set_offset(have);
      auto reader = stub.DownloadMergeResult(&ctx, req);
      mergeserve::v1::DownloadChunk chunk;
      while (reader->Read(&chunk)) {
        if (chunk.offset() != have) {
          std::fprintf(stderr,
                       "mergectl: %s: chunk at offset %lld, expected %lld\n",
                       f.name().c_str(), static_cast<long long>(chunk.offset()),
                       static_cast<long long>(have));
          return 4;
        }
        out.write(chunk.data().data(),
                  static_cast<std::streamsize>(chunk.data().size()));
        have += static_cast<int64_t>(chunk.data().size());
        bar.Update(done + have, total, f.name());
      }
      out.close();
      grpc::Status s = reader->Finish();
      // The replica went away mid-file: resume from `have` (on another).
      if (s.error_code() == grpc::StatusCode::UNAVAILABLE && reconnects < 10) {
        std::this_thread::sleep_for(
            std::chrono::milliseconds(200 << std::min(reconnects, 4)));
        continue;
      }
      if (!s.ok()) return Fail(s, args.server);
      break;
    }
    auto digest = mergeserve::Sha256File(path);
    if (!digest.ok() || *digest != f.sha256()) {
      fs::remove(path, ec);
      std::fprintf(
          stderr, "mergectl: %s failed its SHA-256 check; run download again\n",
          f.name().c_str());
      return 4;
    }
    done += f.size_bytes();
  }
  bar.Finish();
  if (fs::exists(dir, ec)) fs::remove(dir, ec);
  fs::rename(partial, dir, ec);
  if (ec) {
    std::fprintf(stderr, "mergectl: cannot move %s to %s: %s\n",
                 partial.c_str(), dir.c_str(), ec.message().c_str());
    return 1;
  }
  if (args.json) {
    std::cout << nlohmann::json(
                     {{"id", job.id()}, {"dir", dir}, {"bytes", total}})
                     .dump()
              << std::endl;
  } else {
    std::printf("downloaded %s (%d files, %s) to %s\n", job.id().c_str(),
                job.files_size(), HumanBytes(total).c_str(), dir.c_str());
  }
  return 0;
}

int GetJob(MergeService::Stub& stub, const std::string& id, const Args& args,
           MergeJob* out) {
  grpc::ClientContext ctx;
  mergeserve::v1::GetMergeJobRequest req;
  req.set_id(id);
  grpc::Status s = stub.GetMergeJob(&ctx, req, out);
  return s.ok() ? 0 : Fail(s, args.server);
}

}  // namespace

int RunJobVerb(const Args& args, const std::shared_ptr<grpc::Channel>& ch) {
  auto stub = MergeService::NewStub(ch);
  const std::string& verb = args.positional[0];
  const auto& pos = args.positional;
  if (verb == "merge") {
    std::string yaml;
    if (int rc = ReadConfigArg(args, "merge", &yaml); rc != 0) return rc;
    mergeserve::v1::CreateMergeJobRequest req;
    req.mutable_spec()->set_config_yaml(yaml);
    MergeJob job;
    grpc::ClientContext ctx;
    grpc::Status s = stub->CreateMergeJob(&ctx, req, &job);
    if (!s.ok()) return Fail(s, args.server);
    if (!args.json || (!args.wait && args.output.empty())) {
      if (args.json) {
        std::cout << ToJson(job).dump() << std::endl;
      } else {
        std::printf("job %s %s\n", job.id().c_str(),
                    StateName(job.state()).c_str());
        std::fflush(stdout);
      }
    }
    if (args.eval) {
      // One stream: the merge's progress, then the evaluation.
      const int rc = EvaluateJob(args, ch, job.id());
      if (rc != 0 || args.output.empty()) return rc;
    }
    if (!args.wait && args.output.empty()) return 0;
    MergeJob last = job;
    if (!Final(job.state())) {
      const int rc = Watch(*stub, job.id(), args, &last);
      if (rc != 0) return rc;
    }
    if (last.state() != mergeserve::v1::JOB_STATE_SUCCEEDED)
      return JobExit(last);
    if (args.output.empty()) return 0;
    // A job that was already done has its files in `last` only after a Get.
    if (last.files_size() == 0 && GetJob(*stub, job.id(), args, &last) != 0)
      return 1;
    return Download(*stub, last, args.output, args);
  }
  if (verb == "jobs") {
    // Every page, in order.
    mergeserve::v1::ListMergeJobsResponse resp;
    mergeserve::v1::ListMergeJobsRequest req;
    req.set_page_size(1000);
    do {
      mergeserve::v1::ListMergeJobsResponse page;
      grpc::ClientContext ctx;
      grpc::Status s = stub->ListMergeJobs(&ctx, req, &page);
      if (!s.ok()) return Fail(s, args.server);
      for (auto& j : *page.mutable_jobs()) *resp.add_jobs() = std::move(j);
      req.set_page_token(page.next_page_token());
    } while (!req.page_token().empty());
    if (args.json) {
      nlohmann::json j = nlohmann::json::array();
      for (const auto& job : resp.jobs()) j.push_back(ToJson(job));
      std::cout << j.dump() << std::endl;
      return 0;
    }
    std::printf("%-18s %-10s %-16s %9s %10s %-16s %3s  %s\n", "ID", "STATE",
                "METHOD", "TENSORS", "SIZE", "REPLICA", "TRY", "ERROR");
    for (const auto& job : resp.jobs()) {
      std::printf("%-18s %-10s %-16s %4lld/%-4lld %10s %-16s %3d  %s\n",
                  job.id().c_str(), StateName(job.state()).c_str(),
                  MethodOf(job).c_str(),
                  static_cast<long long>(job.tensors_done()),
                  static_cast<long long>(job.tensors_total()),
                  HumanBytes(job.result_bytes()).c_str(),
                  job.replica().substr(0, 16).c_str(), job.attempt(),
                  job.error_message().c_str());
    }
    return 0;
  }
  if (verb == "delete-job") {
    if (pos.size() != 2) {
      std::fprintf(stderr, "mergectl delete-job: expected JOB\n");
      return 2;
    }
    mergeserve::v1::DeleteMergeJobRequest req;
    req.set_id(pos[1]);
    google::protobuf::Empty out;
    grpc::ClientContext ctx;
    grpc::Status s = stub->DeleteMergeJob(&ctx, req, &out);
    if (!s.ok()) return Fail(s, args.server);
    if (args.json) {
      std::cout << nlohmann::json({{"deleted", pos[1]}}).dump() << std::endl;
    } else {
      std::printf("deleted job %s and its result\n", pos[1].c_str());
    }
    return 0;
  }
  if (verb == "watch" || verb == "cancel" || verb == "download") {
    const size_t want = verb == "download" ? 3 : 2;
    if (pos.size() != want) {
      std::fprintf(stderr, "mergectl %s: expected JOB%s\n", verb.c_str(),
                   verb == "download" ? " DIR" : "");
      return 2;
    }
    if (verb == "watch") {
      MergeJob last;
      return Watch(*stub, pos[1], args, &last);
    }
    if (verb == "cancel") {
      mergeserve::v1::CancelMergeJobRequest req;
      req.set_id(pos[1]);
      MergeJob job;
      grpc::ClientContext ctx;
      grpc::Status s = stub->CancelMergeJob(&ctx, req, &job);
      if (!s.ok()) return Fail(s, args.server);
      if (args.json) {
        std::cout << ToJson(job).dump() << std::endl;
      } else {
        std::printf("job %s: %s\n", job.id().c_str(),
                    job.state() == mergeserve::v1::JOB_STATE_RUNNING
                        ? "cancelling"
                        : StateName(job.state()).c_str());
      }
      return 0;
    }
    MergeJob job;
    if (int rc = GetJob(*stub, pos[1], args, &job); rc != 0) return rc;
    return Download(*stub, job, pos[2], args);
  }
  return -1;  // not a job verb
}

}  // namespace mergectl
