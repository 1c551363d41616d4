#include "grpc/upload_reactor.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpc/call.h"
#include "grpc/proto_convert.h"
#include "grpc/status_util.h"
#include "mergeserve/base/byte_size.h"
#include "mergeserve/base/errors.h"
#include "mergeserve/base/secure_random.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/base/temp_tag.h"
#include "mergeserve/format/model_folder.h"

namespace mergeserve {
namespace fs = std::filesystem;

namespace {

// Ends the call at once (a refused upload).
class RefusedUpload
    : public grpc::ServerReadReactor<v1::UploadCheckpointRequest> {
 public:
  explicit RefusedUpload(const absl::Status& s) { Finish(ToGrpcStatus(s)); }
  void OnDone() override { delete this; }
};

}  // namespace

// --- UploadGuard -------------------------------------------------------------

UploadGuard::UploadGuard(
    UploadLimits limits, const TenantQuotas* quotas,
    std::function<absl::StatusOr<int64_t>(const std::string&)> stored_bytes)
    : limits_(limits), quotas_(quotas), stored_bytes_(std::move(stored_bytes)) {
  watchdog_ = std::thread([this] { Loop(); });
}

UploadGuard::~UploadGuard() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  watchdog_.join();
}

absl::Status UploadGuard::Admit(const std::string& tenant, int64_t files,
                                int64_t bytes) const {
  if (files > limits_.max_files) {
    return absl::ResourceExhaustedError(
        absl::StrCat("an upload may carry at most ", limits_.max_files,
                     " files; this one declares ", files));
  }
  if (bytes > limits_.max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "an upload may carry at most ", FormatBytes(limits_.max_bytes),
        "; this one declares ", FormatBytes(bytes)));
  }
  if (quotas_ == nullptr) return absl::OkStatus();
  auto q = quotas_->Get(tenant);
  if (!q.ok()) return q.status();
  absl::Status s =
      CheckQuota(tenant, "max_upload_bytes", q->max_upload_bytes, 0, bytes);
  if (!s.ok()) return s;
  if (q->max_stored_bytes > 0 && stored_bytes_) {
    auto stored = stored_bytes_(tenant);
    if (!stored.ok()) return stored.status();
    return CheckQuota(tenant, "max_stored_bytes", q->max_stored_bytes, *stored,
                      bytes);
  }
  return absl::OkStatus();
}

void UploadGuard::Watch(UploadReactor* r) {
  std::lock_guard<std::mutex> lock(mu_);
  watched_.insert(r);
}

void UploadGuard::Unwatch(UploadReactor* r) {
  // Waits for a check in progress: it holds mu_ while it looks at `r`.
  std::lock_guard<std::mutex> lock(mu_);
  watched_.erase(r);
}

void UploadGuard::Loop() {
  const auto period =
      std::clamp(limits_.idle_timeout / 4, std::chrono::milliseconds(50),
                 std::chrono::milliseconds(1000));
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, period, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stopping_;
    });
    const auto now = std::chrono::steady_clock::now();
    for (UploadReactor* r : watched_) r->ExpireIfIdle(now);
  }
}

// --- UploadReactor
// -------------------------------------------------------------

namespace {
// A name as one folder name: Hub-style names (org/name@rev) must neither
// nest under another upload's folder nor leave folders the orphan sweep
// would take for its own. '+' cannot occur in a name.
std::string OnDiskName(const std::string& name) {
  std::string out = name;
  std::replace(out.begin(), out.end(), '/', '+');
  return out;
}
}  // namespace

bool UploadReactor::AllowedFile(const std::string& n) {
  return IsModelFile(n) || n == "program.pt";
}

grpc::ServerReadReactor<v1::UploadCheckpointRequest>* UploadReactor::Refuse(
    const absl::Status& status) {
  return new RefusedUpload(status);
}

UploadReactor::UploadReactor(Context c, Caller caller, StreamSlot slot,
                             grpc::CallbackServerContext* ctx,
                             v1::Checkpoint* checkpoint, v1::Dataset* dataset)
    : c_(c),
      caller_(std::move(caller)),
      slot_(std::move(slot)),
      response_(checkpoint),
      dataset_response_(dataset) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    last_activity_ = std::chrono::steady_clock::now();
  }
  c_.guard.Watch(this);
  StartRead(&request_);
}

UploadReactor::~UploadReactor() {
  if (current_fd_ >= 0) ::close(current_fd_);
  if (!temp_dir_.empty()) {
    std::error_code ec;
    fs::remove_all(temp_dir_, ec);
  }
}

void UploadReactor::FinishLocked(const absl::Status& status) {
  if (finished_) return;
  finished_ = true;
  c_.auth.Finished(caller_, resource_, status);
  slot_.Release();
  Finish(ToGrpcStatus(status));
}

void UploadReactor::ExpireIfIdle(std::chrono::steady_clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_ || completing_) return;
  const auto idle = now - last_activity_;
  if (idle < c_.guard.limits().idle_timeout) return;
  FinishLocked(absl::DeadlineExceededError(absl::StrCat(
      "upload sent nothing for ",
      std::chrono::duration_cast<std::chrono::seconds>(idle).count(),
      " s (the server's idle limit is ",
      c_.guard.limits().idle_timeout.count() / 1000.0,
      " s); nothing was kept")));
}

absl::Status UploadReactor::Begin(const v1::UploadHeader& header) {
  std::string name;
  const std::string& tenant = caller_.tenant();
  if (dataset_response_ != nullptr) {
    auto d = FromProto(header.dataset());
    if (!d.ok()) return d.status();
    dataset_ = *d;
    name = dataset_.name;
    resource_ = "datasets/" + name;
    MS_RETURN_IF_ERROR(CheckpointRegistry::CheckName("dataset", name));
    if (c_.registry.GetDataset(tenant, name).ok()) {
      return absl::AlreadyExistsError(
          absl::StrCat("dataset '", name, "' already exists"));
    }
    if (header.files_size() != 1 ||
        !absl::EndsWith(header.files(0).name(), ".safetensors")) {
      return absl::InvalidArgumentError(
          "a dataset upload carries exactly one .safetensors file");
    }
  } else {
    auto record = FromProto(header.checkpoint());
    if (!record.ok()) return record.status();
    record_ = *record;
    record_.program.clear();  // an upload's program is its program.pt
    name = record_.name;
    resource_ = "checkpoints/" + name;
    MS_RETURN_IF_ERROR(CheckpointRegistry::CheckName("checkpoint", name));
    auto existing = c_.registry.Get(tenant, name, false);
    if (existing.ok() && existing->tenant == tenant) {
      return absl::AlreadyExistsError(
          absl::StrCat("checkpoint '", name, "' already exists"));
    }
  }
  if (header.files_size() == 0) {
    return absl::InvalidArgumentError("upload header lists no files");
  }
  int64_t total = 0;
  for (const v1::UploadFile& f : header.files()) {
    if (!AllowedFile(f.name())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "upload file '", Abbreviate(f.name()), "' is not a model file"));
    }
    if (f.size_bytes() < 0 || f.sha256().size() != 64) {
      return absl::InvalidArgumentError(absl::StrCat(
          "upload file '", f.name(), "' needs a size and a SHA-256"));
    }
    if (files_.count(f.name())) {
      return absl::InvalidArgumentError(
          absl::StrCat("file '", f.name(), "' listed twice"));
    }
    if (f.size_bytes() > (int64_t{1} << 50) - total) {
      return absl::InvalidArgumentError("upload sizes overflow");
    }
    total += f.size_bytes();
    File file;
    file.size = f.size_bytes();
    file.sha256 = f.sha256();
    file.hash = std::make_unique<Sha256>();
    files_[f.name()] = std::move(file);
    // Checked as we go, so a header of a million files stops early.
    if (static_cast<int64_t>(files_.size()) > c_.guard.limits().max_files) {
      return c_.guard.Admit(tenant, header.files_size(), total);
    }
  }
  MS_RETURN_IF_ERROR(c_.guard.Admit(tenant, header.files_size(), total));
  MS_ASSIGN_OR_RETURN(std::string hex, SecureRandomHex(4));
  temp_dir_ = absl::StrCat(c_.registry.data_dir(), "/uploads/",
                           OnDiskName(name), ".tmp-", TempTag(), hex);
  std::error_code ec;
  fs::create_directories(temp_dir_, ec);
  if (ec) {
    return ErrnoStatus(ec.value(), "cannot create an upload folder");
  }
  return absl::OkStatus();
}

absl::Status UploadReactor::CloseCurrent() {
  if (current_.empty()) return absl::OkStatus();
  File& f = files_[current_];
  if (current_fd_ >= 0 && ::close(current_fd_) != 0) {
    current_fd_ = -1;
    return ErrnoStatus(errno, absl::StrCat("cannot write ", current_));
  }
  current_fd_ = -1;
  if (f.written != f.size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "file '", current_, "' stopped at ", f.written, " of ", f.size,
        " bytes before the next file began (send each file whole, in turn)"));
  }
  f.done = true;
  current_.clear();
  return absl::OkStatus();
}

absl::Status UploadReactor::Append(const v1::UploadChunk& chunk) {
  auto it = files_.find(chunk.file());
  if (it == files_.end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk for undeclared file '", Abbreviate(chunk.file()), "'"));
  }
  File& f = it->second;
  if (chunk.file() != current_) {
    // One file open at a time: the previous one must be complete.
    MS_RETURN_IF_ERROR(CloseCurrent());
    if (f.done) {
      return absl::InvalidArgumentError(
          absl::StrCat("file '", chunk.file(), "' was already sent"));
    }
    current_fd_ = ::open((temp_dir_ + "/" + chunk.file()).c_str(),
                         O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (current_fd_ < 0) {
      return ErrnoStatus(errno, absl::StrCat("cannot store ", chunk.file()));
    }
    current_ = chunk.file();
  }
  if (chunk.offset() != f.written) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk of '", chunk.file(), "' at offset ", chunk.offset(),
                     ", expected ", f.written));
  }
  const int64_t n = static_cast<int64_t>(chunk.data().size());
  if (f.written + n > f.size) {
    return absl::DataLossError(absl::StrCat("file '", chunk.file(),
                                            "' is longer than its declared ",
                                            f.size, " bytes"));
  }
  const char* p = chunk.data().data();
  int64_t left = n;
  while (left > 0) {
    const ssize_t w = ::write(current_fd_, p, static_cast<size_t>(left));
    if (w < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("cannot store ", chunk.file()));
    }
    p += w;
    left -= w;
  }
  f.hash->Update(chunk.data().data(), chunk.data().size());
  f.written += n;
  return absl::OkStatus();
}

void UploadReactor::OnReadDone(bool ok) {
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return;
  last_activity_ = std::chrono::steady_clock::now();
  if (!ok) {
    // The client closed its side (or the call broke: then nothing is
    // sent back and the destructor cleans up).
    if (!started_) {
      FinishLocked(absl::InvalidArgumentError("empty upload"));
      return;
    }
    absl::Status s;
    for (auto& [name, f] : files_) {
      if (!s.ok()) break;
      if (f.written != f.size) {
        s = absl::DataLossError(absl::StrCat("upload of '", name,
                                             "' stopped at ", f.written, " of ",
                                             f.size, " bytes"));
      } else if (f.hash->HexDigest() != f.sha256) {
        s = absl::DataLossError(absl::StrCat(
            "file '", name, "' does not match its declared SHA-256"));
      } else if (name == current_) {
        s = CloseCurrent();
      } else if (f.size == 0 && !f.done) {
        // Empty files get no chunks.
        const int fd = ::open((temp_dir_ + "/" + name).c_str(),
                              O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) {
          s = ErrnoStatus(errno, absl::StrCat("cannot store ", name));
        } else {
          ::close(fd);
        }
      }
    }
    if (!s.ok()) {
      FinishLocked(s);
      return;
    }
    completing_ = true;
    // Validating and hashing the folder takes a while: not on a gRPC thread.
    if (!c_.control.TrySubmit([this] { Complete(); })) {
      FinishLocked(ControlBusy());
    }
    return;
  }
  absl::Status s;
  if (!started_) {
    if (request_.part_case() != v1::UploadCheckpointRequest::kHeader) {
      s = absl::InvalidArgumentError("an upload must start with its header");
    } else {
      started_ = true;
      s = Begin(request_.header());
    }
  } else if (request_.part_case() != v1::UploadCheckpointRequest::kChunk) {
    s = absl::InvalidArgumentError("only one header per upload");
  } else {
    s = Append(request_.chunk());
  }
  if (!s.ok()) {
    FinishLocked(s);
    return;
  }
  StartRead(&request_);
}

void UploadReactor::Complete() {
  // A unique folder per upload: two uploads racing for one name never share
  // files (the registry then accepts exactly one of them).
  const bool dataset = dataset_response_ != nullptr;
  absl::Status s;
  auto hex = SecureRandomHex(4);
  const std::string final_dir = absl::StrCat(
      c_.registry.data_dir(), dataset ? "/datasets/" : "/checkpoints/",
      OnDiskName(dataset ? dataset_.name : record_.name), "-",
      hex.ok() ? *hex : "0");
  std::error_code ec;
  fs::create_directories(fs::path(final_dir).parent_path(), ec);
  fs::rename(temp_dir_, final_dir, ec);
  if (ec) {
    s = ErrnoStatus(ec.value(), "cannot store the upload");
  } else {
    temp_dir_ = final_dir;  // removed again below if registration fails
    if (dataset) {
      dataset_.path = final_dir + "/" + files_.begin()->first;
      auto registered =
          c_.registry.RegisterDatasetUpload(caller_.tenant(), dataset_);
      if (registered.ok()) ToProto(*registered, dataset_response_);
      s = registered.status();
    } else {
      record_.path = final_dir;
      auto registered = c_.registry.RegisterUpload(caller_.tenant(), record_);
      if (registered.ok()) {
        ToProto(*registered, response_);
        response_->clear_tensors();
      }
      s = registered.status();
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (s.ok()) temp_dir_.clear();  // the registry owns it now
    finished_ = true;
  }
  // Not a reaction: OnDone (and delete) may follow Finish at once, so
  // Finish is the last thing that touches this object.
  c_.auth.Finished(caller_, resource_, s);
  slot_.Release();
  Finish(ToGrpcStatus(s));
}

void UploadReactor::OnDone() {
  c_.guard.Unwatch(this);
  delete this;
}

}  // namespace mergeserve
