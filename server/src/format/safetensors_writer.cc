#include "mergeserve/format/safetensors_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "mergeserve/base/errors.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/base/temp_tag.h"
#include "nlohmann/json.hpp"

namespace mergeserve {
namespace fs = std::filesystem;
namespace {

// A full disk is RESOURCE_EXHAUSTED, not INTERNAL.
absl::Status IoError(const std::string& what, const std::string& path) {
  return ErrnoStatus(errno, absl::StrCat(what, " ", path));
}

absl::Status WriteAll(int fd, const void* data, uint64_t size, uint64_t offset,
                      const std::string& path) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::pwrite(fd, p, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return IoError("cannot write", path);
    }
    p += n;
    size -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

bool DirIsEmpty(const std::string& dir) {
  std::error_code ec;
  return fs::is_directory(dir, ec) &&
         fs::directory_iterator(dir, ec) == fs::directory_iterator();
}

}  // namespace

uint64_t TensorSpec::nbytes() const {
  uint64_t n = DTypeSize(dtype);
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

absl::StatusOr<std::unique_ptr<ShardedWriter>> ShardedWriter::Create(
    Options options, std::vector<TensorSpec> tensors) {
  std::error_code ec;
  if (options.output_dir.empty()) {
    return absl::InvalidArgumentError("output folder is empty");
  }
  fs::path out = fs::path(options.output_dir).lexically_normal();
  if (out.filename().empty()) out = out.parent_path();
  if (fs::exists(out, ec) && !fs::is_directory(out, ec)) {
    return absl::AlreadyExistsError(
        absl::StrCat("output ", out.string(), " exists and is not a folder"));
  }
  if (fs::exists(out, ec) && !DirIsEmpty(out.string()) && !options.overwrite) {
    return absl::AlreadyExistsError(absl::StrCat(
        "output folder ", out.string(),
        " exists and is not empty (pass --overwrite to replace it)"));
  }
  fs::path parent =
      out.parent_path().empty() ? fs::path(".") : out.parent_path();
  fs::create_directories(parent, ec);
  if (ec) {
    return ErrnoStatus(ec.value(),
                       absl::StrCat("cannot create ", parent.string()));
  }
  std::unique_ptr<ShardedWriter> w(new ShardedWriter());
  options.output_dir = out.string();
  w->options_ = std::move(options);
  w->tensors_ = std::move(tensors);
  std::random_device rd;
  w->temp_dir_ = absl::StrFormat("%s%s%s%d-%08x", out.string(), kTempSuffix,
                                 TempTag(), getpid(), rd());
  if (!fs::create_directory(w->temp_dir_, ec)) {
    return ErrnoStatus(
        ec.value(),
        absl::StrCat("cannot create temporary folder ", w->temp_dir_));
  }

  // Assign tensors to shards in order.
  std::vector<std::vector<size_t>> members;
  uint64_t current = 0;
  w->placement_.resize(w->tensors_.size());
  for (size_t i = 0; i < w->tensors_.size(); ++i) {
    const uint64_t nb = w->tensors_[i].nbytes();
    if (members.empty() || (!members.back().empty() &&
                            current + nb > w->options_.max_shard_bytes)) {
      members.emplace_back();
      current = 0;
    }
    members.back().push_back(i);
    current += nb;
  }
  if (members.empty()) members.emplace_back();
  const size_t n = members.size();
  for (size_t s = 0; s < n; ++s) {
    Shard shard;
    shard.file_name =
        n == 1 ? "model.safetensors"
               : absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, n);
    nlohmann::json header = nlohmann::json::object();
    if (!w->options_.metadata.empty()) {
      header["__metadata__"] = w->options_.metadata;
    }
    uint64_t off = 0;
    for (size_t i : members[s]) {
      const TensorSpec& t = w->tensors_[i];
      header[t.name] = {{"dtype", std::string(DTypeName(t.dtype))},
                        {"shape", t.shape},
                        {"data_offsets", {off, off + t.nbytes()}}};
      w->placement_[i] = {s, off};
      off += t.nbytes();
    }
    std::string text = header.dump();
    // Pad with spaces so the data section is 8-byte aligned, as HF does.
    while ((text.size() % 8) != 0) text.push_back(' ');
    shard.data_start = 8 + text.size();
    shard.size = shard.data_start + off;
    for (size_t i : members[s]) w->placement_[i].offset += shard.data_start;
    const std::string path = w->temp_dir_ + "/" + shard.file_name;
    shard.fd =
        ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (shard.fd < 0) return IoError("cannot create", path);
    w->shards_.push_back(shard);
    unsigned char len[8];
    uint64_t hl = text.size();
    for (int b = 0; b < 8; ++b)
      len[b] = static_cast<unsigned char>(hl >> (8 * b));
    MS_RETURN_IF_ERROR(WriteAll(shard.fd, len, 8, 0, path));
    MS_RETURN_IF_ERROR(WriteAll(shard.fd, text.data(), text.size(), 8, path));
    // Reserve the whole shard now, so a disk too small fails before the
    // merge starts (file systems without fallocate get a sparse file).
    const int rc =
        w->options_.reserve
            ? ::posix_fallocate(shard.fd, 0, static_cast<off_t>(shard.size))
            : EOPNOTSUPP;
    if (rc == ENOSPC || rc == EDQUOT || rc == EFBIG) {
      errno = rc;
      return IoError("cannot reserve space for", path);
    }
    if (rc != 0 && ::ftruncate(shard.fd, static_cast<off_t>(shard.size)) != 0) {
      return IoError("cannot size", path);
    }
  }
  return w;
}

ShardedWriter::~ShardedWriter() {
  for (auto& s : shards_) {
    if (s.fd >= 0) ::close(s.fd);
  }
  if (!committed_ && !temp_dir_.empty()) {
    std::error_code ec;
    fs::remove_all(temp_dir_, ec);
  }
}

absl::Status ShardedWriter::Write(size_t index, uint64_t offset,
                                  const void* data, uint64_t size) {
  if (index >= tensors_.size() || offset + size > tensors_[index].nbytes()) {
    return absl::OutOfRangeError(absl::StrCat(
        "write outside tensor ",
        index < tensors_.size() ? tensors_[index].name : "<bad index>"));
  }
  const Placement& p = placement_[index];
  const Shard& s = shards_[p.shard];
  return WriteAll(s.fd, data, size, p.offset + offset,
                  temp_dir_ + "/" + s.file_name);
}

absl::Status ShardedWriter::AddFile(const std::string& name,
                                    const std::string& contents) {
  if (name.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("bad file name ", name));
  }
  const std::string path = temp_dir_ + "/" + name;
  const int fd =
      ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return IoError("cannot create", path);
  absl::Status s = WriteAll(fd, contents.data(), contents.size(), 0, path);
  ::close(fd);
  return s;
}

absl::Status ShardedWriter::Commit() {
  if (committed_) return absl::FailedPreconditionError("already committed");
  if (shards_.size() > 1) {
    nlohmann::json index;
    uint64_t total = 0;
    nlohmann::json map = nlohmann::json::object();
    for (size_t i = 0; i < tensors_.size(); ++i) {
      total += tensors_[i].nbytes();
      map[tensors_[i].name] = shards_[placement_[i].shard].file_name;
    }
    index["metadata"] = {{"total_size", total}};
    index["weight_map"] = map;
    MS_RETURN_IF_ERROR(
        AddFile("model.safetensors.index.json", index.dump(2) + "\n"));
  }
  for (auto& s : shards_) {
    if (::fsync(s.fd) != 0) return IoError("cannot sync", s.file_name);
    ::close(s.fd);
    s.fd = -1;
  }
  std::error_code ec;
  const std::string& out = options_.output_dir;
  std::string old;
  if (fs::exists(out, ec)) {
    if (DirIsEmpty(out)) {
      fs::remove(out, ec);
    } else if (options_.overwrite) {
      old = absl::StrCat(out, kTempSuffix, TempTag(), "old-", getpid());
      fs::rename(out, old, ec);
      if (ec) {
        return absl::InternalError(
            absl::StrCat("cannot move aside ", out, ": ", ec.message()));
      }
    } else {
      return absl::AlreadyExistsError(
          absl::StrCat("output folder ", out, " appeared while merging"));
    }
  }
  fs::rename(temp_dir_, out, ec);
  if (ec) {
    if (!old.empty()) fs::rename(old, out, ec);
    return absl::InternalError(absl::StrCat("cannot move ", temp_dir_, " to ",
                                            out, ": ", ec.message()));
  }
  committed_ = true;
  if (!old.empty()) fs::remove_all(old, ec);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ShardedWriter>> SingleFileWriter(
    const std::string& output_dir, std::vector<TensorSpec> tensors) {
  ShardedWriter::Options o;
  o.output_dir = output_dir;
  o.max_shard_bytes = ~uint64_t{0};
  o.overwrite = true;
  return ShardedWriter::Create(std::move(o), std::move(tensors));
}

}  // namespace mergeserve
