#include "grpc/upload_reactor.h"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "grpc/proto_convert.h"
#include "grpc/status_util.h"
#include "mergeserve/format/model_folder.h"

namespace mergeserve {
namespace fs = std::filesystem;

namespace {
constexpr int64_t kMaxFileBytes = int64_t{1} << 40;
}

absl::Status ValidatorsBusy() {
  return absl::ResourceExhaustedError(
      "too many registrations are being validated; try again later");
}

bool UploadReactor::AllowedFile(const std::string& n) {
  return IsModelFile(n) || n == "program.pt";
}

UploadReactor::UploadReactor(CheckpointRegistry& registry,
                             BackgroundExecutor& validators,
                             v1::Checkpoint* response)
    : registry_(registry), validators_(validators), response_(response) {
  StartRead(&request_);
}

UploadReactor::UploadReactor(CheckpointRegistry& registry,
                             BackgroundExecutor& validators,
                             v1::Dataset* response)
    : registry_(registry),
      validators_(validators),
      dataset_response_(response) {
  StartRead(&request_);
}

UploadReactor::~UploadReactor() {
  CloseFiles();
  if (!temp_dir_.empty()) {
    std::error_code ec;
    fs::remove_all(temp_dir_, ec);
  }
}

void UploadReactor::CloseFiles() {
  for (auto& [name, f] : files_) {
    if (f.fd >= 0) ::close(f.fd);
    f.fd = -1;
  }
}

absl::Status UploadReactor::Begin(const v1::UploadHeader& header) {
  std::string name;
  if (dataset_response_ != nullptr) {
    auto d = FromProto(header.dataset());
    if (!d.ok()) return d.status();
    dataset_ = *d;
    name = dataset_.name;
    if (registry_.GetDataset(name).ok()) {
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
    name = record_.name;
    if (registry_.Get(name, false).ok()) {
      return absl::AlreadyExistsError(
          absl::StrCat("checkpoint '", name, "' already exists"));
    }
  }
  if (!CheckpointRegistry::IsValidName(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid name '", name, "'"));
  }
  if (header.files_size() == 0) {
    return absl::InvalidArgumentError("upload header lists no files");
  }
  std::random_device rd;
  temp_dir_ = absl::StrFormat("%s/uploads/%s.tmp-%08x", registry_.data_dir(),
                              name, rd());
  std::error_code ec;
  fs::create_directories(temp_dir_, ec);
  if (ec) return absl::InternalError("cannot create upload folder");
  for (const v1::UploadFile& f : header.files()) {
    if (!AllowedFile(f.name())) {
      return absl::InvalidArgumentError(
          absl::StrCat("upload file '", f.name(), "' is not a model file"));
    }
    if (f.size_bytes() < 0 || f.size_bytes() > kMaxFileBytes ||
        f.sha256().size() != 64) {
      return absl::InvalidArgumentError(absl::StrCat(
          "upload file '", f.name(), "' needs a size and a SHA-256"));
    }
    if (files_.count(f.name())) {
      return absl::InvalidArgumentError(
          absl::StrCat("file '", f.name(), "' listed twice"));
    }
    File file;
    file.size = f.size_bytes();
    file.sha256 = f.sha256();
    file.hash = std::make_unique<Sha256>();
    file.fd = ::open((temp_dir_ + "/" + f.name()).c_str(),
                     O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (file.fd < 0) return absl::InternalError("cannot create upload file");
    files_[f.name()] = std::move(file);
  }
  return absl::OkStatus();
}

absl::Status UploadReactor::Append(const v1::UploadChunk& chunk) {
  auto it = files_.find(chunk.file());
  if (it == files_.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk for undeclared file '", chunk.file(), "'"));
  }
  File& f = it->second;
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
    const ssize_t w = ::write(f.fd, p, static_cast<size_t>(left));
    if (w < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(
          absl::StrCat("cannot write upload of ", chunk.file()));
    }
    p += w;
    left -= w;
  }
  f.hash->Update(chunk.data().data(), chunk.data().size());
  f.written += n;
  return absl::OkStatus();
}

void UploadReactor::Fail(const absl::Status& status) {
  if (finished_) return;
  finished_ = true;
  Finish(ToGrpcStatus(status));
}

void UploadReactor::OnReadDone(bool ok) {
  if (finished_) return;
  if (!ok) {
    Complete();  // the client closed its side
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
    Fail(s);
    return;
  }
  StartRead(&request_);
}

void UploadReactor::Complete() {
  if (!started_) {
    Fail(absl::InvalidArgumentError("empty upload"));
    return;
  }
  for (auto& [name, f] : files_) {
    if (f.written != f.size) {
      Fail(absl::DataLossError(absl::StrCat("upload of '", name,
                                            "' stopped at ", f.written, " of ",
                                            f.size, " bytes")));
      return;
    }
    const std::string got = f.hash->HexDigest();
    if (got != f.sha256) {
      Fail(absl::DataLossError(absl::StrCat(
          "file '", name, "' does not match its SHA-256 (got ", got, ")")));
      return;
    }
  }
  CloseFiles();
  // Validating and hashing the folder takes a while: not on a gRPC thread.
  const bool queued = validators_.TrySubmit([this] {
    // A unique folder per upload: two uploads racing for one name never
    // share files (the registry then accepts exactly one of them).
    std::random_device rd;
    const bool dataset = dataset_response_ != nullptr;
    const std::string final_dir =
        absl::StrFormat("%s/%s/%s-%08x", registry_.data_dir(),
                        dataset ? "datasets" : "checkpoints",
                        dataset ? dataset_.name : record_.name, rd());
    std::error_code ec;
    fs::create_directories(fs::path(final_dir).parent_path(), ec);
    fs::rename(temp_dir_, final_dir, ec);
    if (ec) {
      Fail(absl::InternalError(
          absl::StrCat("cannot store upload: ", ec.message())));
      return;
    }
    temp_dir_ = final_dir;  // removed again below if registration fails
    absl::Status s;
    if (dataset) {
      dataset_.path = final_dir + "/" + files_.begin()->first;
      auto registered = registry_.RegisterDataset(dataset_);
      if (registered.ok()) ToProto(*registered, dataset_response_);
      s = registered.status();
    } else {
      record_.path = final_dir;
      auto registered = registry_.Register(record_);
      if (registered.ok()) {
        ToProto(*registered, response_);
        response_->clear_tensors();
      }
      s = registered.status();
    }
    if (!s.ok()) {
      Fail(s);
      return;
    }
    temp_dir_.clear();  // the registry owns it now
    finished_ = true;
    Finish(grpc::Status::OK);
  });
  if (!queued) Fail(ValidatorsBusy());
}

void UploadReactor::OnCancel() {
  // The client went away: OnDone follows and the destructor cleans up.
}

void UploadReactor::OnDone() { delete this; }

}  // namespace mergeserve
