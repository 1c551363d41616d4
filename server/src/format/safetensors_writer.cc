#include "mergeserve/format/safetensors_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>
#include <system_error>

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

// How much a shard accumulates before its writeback is started: large
// enough that the kicks cost nothing next to the copies, small enough that
// the disk is busy while the merge still computes.
constexpr uint64_t kWritebackBytes = uint64_t{8} << 20;
// A scratch output starts writeback past this (Options::durable).
constexpr uint64_t kScratchCachedBytes = uint64_t{1} << 30;

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

  // The recycled folder goes however Create() ends: what was not taken
  // over is the caller's no longer.
  struct RemoveRecycled {
    std::string dir;
    ~RemoveRecycled() {
      std::error_code ignored;
      if (!dir.empty()) fs::remove_all(dir, ignored);
    }
  } remove_recycled{w->options_.recycle_dir};

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
  w->unflushed_.reset(new std::atomic<uint64_t>[n]);
  w->unsynced_.reset(new std::atomic<uint64_t>[n]);
  for (size_t s = 0; s < n; ++s) w->unflushed_[s] = w->unsynced_[s] = 0;
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
    // A recycled shard keeps its pages: no O_TRUNC, then cut to size.
    const bool recycled =
        !w->options_.recycle_dir.empty() && !w->options_.durable &&
        ::rename((w->options_.recycle_dir + "/" + shard.file_name).c_str(),
                 path.c_str()) == 0;
    shard.fd =
        ::open(path.c_str(),
               O_RDWR | O_CREAT | O_CLOEXEC | (recycled ? 0 : O_TRUNC), 0644);
    if (shard.fd < 0) return IoError("cannot create", path);
    if (recycled &&
        ::ftruncate(shard.fd, static_cast<off_t>(shard.size)) != 0) {
      return IoError("cannot size", path);
    }
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
  if (w->options_.durable && w->options_.sync_every_bytes > 0 &&
      w->options_.reserve) {
    {
      std::lock_guard<std::mutex> lock(w->sync_mu_);
      w->sync_wanted_.assign(n, false);
    }
    ShardedWriter* self = w.get();
    try {
      w->syncer_ = std::thread([self] { self->SyncLoop(); });
    } catch (const std::system_error& e) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot start the result's syncer: ", e.what()));
    }
  }
  if (w->options_.digest_files) {
    std::lock_guard<std::mutex> lock(w->hash_mu_);
    w->done_.assign(w->tensors_.size(), false);
    for (size_t s = 0; s < n; ++s) {
      w->next_tensor_.push_back(members[s].empty() ? 0 : members[s].front());
      // The header is final from the start.
      w->ready_.push_back(w->shards_[s].data_start);
      w->hashed_.push_back(0);
      w->shard_hashes_.push_back(std::make_unique<Sha256>());
    }
    ShardedWriter* self = w.get();
    try {
      w->hasher_ = std::thread([self] { self->HashLoop(); });
    } catch (const std::system_error& e) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot start the result's hasher: ", e.what()));
    }
  }
  return w;
}

void ShardedWriter::StopHasher() {
  if (!hasher_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(hash_mu_);
    aborted_ = true;
  }
  hash_cv_.notify_all();
  hasher_.join();
}

absl::Status ShardedWriter::StopSyncer() {
  if (syncer_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(sync_mu_);
      sync_stop_ = true;
    }
    sync_cv_.notify_all();
    syncer_.join();
  }
  // Also for a Commit() retried: the kernel reported the error once, to
  // the background sync, and the retry's fsync may not see it again.
  std::lock_guard<std::mutex> lock(sync_mu_);
  return sync_error_;
}

void ShardedWriter::SyncLoop() {
  std::unique_lock<std::mutex> lock(sync_mu_);
  for (;;) {
    size_t s = 0;
    while (s < sync_wanted_.size() && !sync_wanted_[s]) ++s;
    if (sync_stop_ || !sync_error_.ok()) return;
    if (s == sync_wanted_.size()) {
      sync_cv_.wait(lock);
      continue;
    }
    sync_wanted_[s] = false;
    const int fd = shards_[s].fd;
    lock.unlock();
    const bool ok =
        (options_.background_datasync ? options_.background_datasync(fd)
                                      : ::fdatasync(fd)) == 0;
    const absl::Status error =
        ok ? absl::OkStatus()
           : IoError("cannot sync", temp_dir_ + "/" + shards_[s].file_name);
    lock.lock();
    if (!ok) sync_error_ = error;
    background_syncs_.fetch_add(1);
  }
}

ShardedWriter::~ShardedWriter() {
  StopHasher();
  StopSyncer().IgnoreError();
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
  MS_RETURN_IF_ERROR(WriteAll(s.fd, data, size, p.offset + offset,
                              temp_dir_ + "/" + s.file_name));
  KickWriteback(p.shard, size);
  return absl::OkStatus();
}

void ShardedWriter::KickWriteback(size_t shard, uint64_t bytes) {
  if (!options_.durable) {
    if (written_.fetch_add(bytes) + bytes < kScratchCachedBytes) return;
  } else if (syncer_.joinable()) {
    const uint64_t total = unsynced_[shard].fetch_add(bytes) + bytes;
    uint64_t expected = total;
    if (total >= options_.sync_every_bytes &&
        unsynced_[shard].compare_exchange_strong(expected, 0)) {
      {
        std::lock_guard<std::mutex> lock(sync_mu_);
        sync_wanted_[shard] = true;
      }
      sync_cv_.notify_one();
    }
  }
#ifdef SYNC_FILE_RANGE_WRITE
  const uint64_t total = unflushed_[shard].fetch_add(bytes) + bytes;
  if (total < kWritebackBytes) return;
  // One thread wins the exchange and starts writeback of everything dirty
  // in the file (asynchronous: WRITE without WAIT_*); failures surface at
  // Commit()'s fsync, which is what decides durability.
  uint64_t expected = total;
  if (!unflushed_[shard].compare_exchange_strong(expected, 0)) return;
  ::sync_file_range(shards_[shard].fd, 0, 0, SYNC_FILE_RANGE_WRITE);
#else
  (void)shard;
  (void)bytes;
#endif
}

void ShardedWriter::TensorDone(size_t index) {
  if (!hasher_.joinable() || index >= tensors_.size()) return;
  {
    std::lock_guard<std::mutex> lock(hash_mu_);
    done_[index] = true;
    const size_t s = placement_[index].shard;
    size_t& next = next_tensor_[s];
    while (next < tensors_.size() && placement_[next].shard == s &&
           done_[next]) {
      ready_[s] = placement_[next].offset + tensors_[next].nbytes();
      ++next;
    }
  }
  hash_cv_.notify_one();
}

void ShardedWriter::HashLoop() {
  std::vector<char> buf(size_t{1} << 20);
  std::unique_lock<std::mutex> lock(hash_mu_);
  for (;;) {
    if (aborted_ || !hash_error_.ok()) return;
    size_t s = 0;
    while (s < shards_.size() && hashed_[s] >= ready_[s]) ++s;
    if (s == shards_.size()) {
      if (closing_) return;
      hash_cv_.wait(lock);
      continue;
    }
    const uint64_t from = hashed_[s];
    const uint64_t size = std::min<uint64_t>(ready_[s] - from, buf.size());
    const int fd = shards_[s].fd;
    lock.unlock();
    uint64_t got = 0;
    absl::Status error;
    while (got < size) {
      const ssize_t r = ::pread(fd, buf.data() + got, size - got,
                                static_cast<off_t>(from + got));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        if (r == 0) errno = EIO;  // the file is sized up front: never short
        error = IoError("cannot read back", shards_[s].file_name);
        break;
      }
      got += static_cast<uint64_t>(r);
    }
    if (error.ok()) shard_hashes_[s]->Update(buf.data(), size);
    lock.lock();
    if (!error.ok()) {
      hash_error_ = std::move(error);
      return;
    }
    hashed_[s] = from + size;
  }
}

absl::Status ShardedWriter::DigestAndSync() {
  // Everything is written now: the hasher finishes the shards' tails while
  // this thread waits for their blocks to reach the disk.
  if (hasher_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(hash_mu_);
      for (size_t s = 0; s < shards_.size(); ++s) ready_[s] = shards_[s].size;
      closing_ = true;
    }
    hash_cv_.notify_all();
  }
  // The sync in flight finishes first (it shortens the ones below).
  absl::Status synced = StopSyncer();
  if (options_.durable) {
    for (const Shard& s : shards_) {
      const int rc =
          options_.commit_fsync ? options_.commit_fsync(s.fd) : ::fsync(s.fd);
      if (rc != 0 && synced.ok()) {
        synced = IoError("cannot sync", temp_dir_ + "/" + s.file_name);
      }
    }
  }
  if (!synced.ok()) StopHasher();  // no use hashing what will not commit
  if (hasher_.joinable()) hasher_.join();
  MS_RETURN_IF_ERROR(synced);
  if (options_.drop_cached && options_.durable) {
    // Advice only: synced pages are clean, so this frees them at once.
    for (const Shard& s : shards_) {
      ::posix_fadvise(s.fd, 0, 0, POSIX_FADV_DONTNEED);
    }
  }
  // A Commit() retried after a failed rename keeps the digests it made
  // (a finished hash cannot be finished again).
  if (!options_.digest_files || !file_digests_.empty()) {
    return absl::OkStatus();
  }
  {
    std::lock_guard<std::mutex> lock(hash_mu_);
    MS_RETURN_IF_ERROR(hash_error_);
  }
  for (size_t s = 0; s < shards_.size(); ++s) {
    file_digests_.emplace_back(shards_[s].file_name,
                               shard_hashes_[s]->HexDigest());
  }
  // Side files (config, tokenizer, index) are small: hashed here.
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(temp_dir_, ec)) {
    const std::string name = e.path().filename().string();
    const bool is_shard =
        std::any_of(shards_.begin(), shards_.end(),
                    [&](const Shard& s) { return s.file_name == name; });
    if (!e.is_regular_file() || is_shard) continue;
    MS_ASSIGN_OR_RETURN(std::string h, Sha256File(e.path().string()));
    file_digests_.emplace_back(name, std::move(h));
  }
  if (ec) {
    return ErrnoStatus(ec.value(), absl::StrCat("cannot list ", temp_dir_));
  }
  std::sort(file_digests_.begin(), file_digests_.end());
  return absl::OkStatus();
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
  MS_RETURN_IF_ERROR(DigestAndSync());
  for (auto& s : shards_) {
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
