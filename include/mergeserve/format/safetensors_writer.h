// Writes a sharded Hugging Face model folder.
//
// The tensor list is known up front, so every header and byte offset is fixed
// at Create(): tensors may then be written in any order and from many threads
// (positioned writes), which lets the engine stream results straight to disk.
// Everything goes to a temporary sibling folder that Commit() renames into
// place; if the writer is destroyed uncommitted the temporary folder is
// removed, so a half-written model never appears under the final name.
#ifndef MERGESERVE_FORMAT_SAFETENSORS_WRITER_H_
#define MERGESERVE_FORMAT_SAFETENSORS_WRITER_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "mergeserve/base/sha256.h"
#include "mergeserve/format/dtype.h"

namespace mergeserve {

struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t nbytes() const;
};

class ShardedWriter {
 public:
  struct Options {
    std::string output_dir;
    // A new shard starts when the next tensor would push a shard past this.
    uint64_t max_shard_bytes = 5ull << 30;
    // Replace an existing non-empty output_dir at Commit().
    bool overwrite = false;
    std::map<std::string, std::string> metadata = {{"format", "pt"}};
    // Reserve each shard's blocks up front (a full disk fails before any
    // work); false leaves a sparse file, for outputs never written.
    bool reserve = true;
    // Compute every file's SHA-256 while the merge runs: a writer thread
    // hashes each shard in order, from the page cache, as TensorDone()
    // makes its prefix final, so a caller that records digests (the server)
    // neither reads the result back nor waits for a hash after the merge.
    bool digest_files = false;
    // Drop the shards from the page cache once synced. A server writes
    // results that are read again rarely; keeping them cached would evict
    // the inputs that the next merge reads, and fresh pages cost more than
    // recycled ones (much more on a VM, where the host backs them lazily).
    bool drop_cached = false;
    // Every this many bytes written to a shard, a writer thread makes them
    // durable (fdatasync) while the merge goes on, so Commit()'s fsync
    // waits for the last stretch only. On a VM a sync's cost grows with
    // what was written since the last one (the host syncs its image): one
    // sync of a 321 MiB result at the end took 0.05-0.37 s (median 0.28) of
    // a 1.7 s merge, the last of 32 MiB syncs about 0.03 s. 0 syncs only at
    // Commit().
    uint64_t sync_every_bytes = uint64_t{32} << 20;
    // Make the shards durable before Commit() renames the folder into
    // place. false, for scratch outputs that are read and removed while the
    // merge that made them runs (a sweep point, a stage): no syncs at all,
    // and no early writeback for the first kScratchCachedBytes, so a small
    // one removed soon may never reach the disk. Past that, writeback
    // starts as for a durable output, so a large one's dirty pages do not
    // pile up (the kernel would throttle every writer, and a cgroup v1
    // memory limit counts them). The rename is atomic either way.
    bool durable = true;
    // A folder of an earlier scratch output (durable false) whose shard
    // files, where their names match, this writer takes over and overwrites
    // in place instead of creating new ones; the folder is removed after.
    // Their pages stay in the page cache, so the output is written into
    // recycled pages: a new file's pages are fresh, and on a VM whose host
    // takes freed memory back (free page reporting) the first touch of a
    // fresh page costs about 1.4-3.6 s/GB (PostgreSQL recycles WAL segments
    // for the same reason). Every byte is rewritten: the header here, each
    // tensor by the merge, and the file is cut to the new size.
    std::string recycle_dir;
    // Fault injection for tests, as LevelDB's FaultInjectionTestEnv: what
    // the syncer thread calls in place of fdatasync(fd) (a device that
    // fails writeback cannot be set up on a test machine). Null: fdatasync.
    std::function<int(int fd)> background_datasync;
    // The same for Commit()'s fsync(fd) of each shard. Null: fsync.
    std::function<int(int fd)> commit_fsync;
  };

  static absl::StatusOr<std::unique_ptr<ShardedWriter>> Create(
      Options options, std::vector<TensorSpec> tensors);
  ~ShardedWriter();
  ShardedWriter(const ShardedWriter&) = delete;
  ShardedWriter& operator=(const ShardedWriter&) = delete;

  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  int num_shards() const { return static_cast<int>(shards_.size()); }

  // Writes bytes [offset, offset+size) of tensor `index`. Thread-safe for
  // disjoint ranges.
  absl::Status Write(size_t index, uint64_t offset, const void* data,
                     uint64_t size);
  // Says tensor `index` is completely written. Only a hint for the hasher
  // (Options::digest_files): Commit() hashes whatever was not marked.
  void TensorDone(size_t index);
  // Adds a small file (config.json, tokenizer files) to the output folder.
  absl::Status AddFile(const std::string& name, const std::string& contents);
  // Syncs, writes the index (when sharded) and atomically moves the folder
  // into place.
  absl::Status Commit();

  const std::string& temp_dir() const { return temp_dir_; }
  // fdatasyncs the syncer thread has finished (Options::sync_every_bytes).
  int background_syncs() const { return background_syncs_.load(); }
  // (file name, lower-case hex SHA-256) of every file in the folder, sorted
  // by name; filled by Commit() when Options::digest_files is set.
  const std::vector<std::pair<std::string, std::string>>& file_digests() const {
    return file_digests_;
  }

 private:
  struct Shard {
    std::string file_name;
    int fd = -1;
    uint64_t data_start = 0;  // 8 + header length
    uint64_t size = 0;
  };
  struct Placement {
    size_t shard;
    uint64_t offset;  // absolute in the shard file
  };
  ShardedWriter() = default;
  // Starts writing back a shard's dirty pages once enough have piled up, so
  // Commit()'s fsync waits for the tail only, not the whole file.
  void KickWriteback(size_t shard, uint64_t bytes);
  // The hasher thread's loop: hashes each shard's final prefix as it grows.
  void HashLoop();
  // Finishes the hashes while syncing the shards; fills file_digests_.
  absl::Status DigestAndSync();
  void StopHasher();
  // The syncer thread's loop: fdatasyncs the shards KickWriteback marks.
  void SyncLoop();
  // Waits for the sync in flight, then ends the syncer; its first error.
  absl::Status StopSyncer();

  Options options_;
  std::vector<TensorSpec> tensors_;
  std::vector<Shard> shards_;
  std::vector<Placement> placement_;
  // Bytes written to each shard since its last writeback kick.
  std::unique_ptr<std::atomic<uint64_t>[]> unflushed_;
  // Bytes written to all shards (scratch outputs' writeback threshold).
  std::atomic<uint64_t> written_{0};
  // Bytes written to each shard since the syncer was last asked to sync it.
  std::unique_ptr<std::atomic<uint64_t>[]> unsynced_;
  std::vector<std::pair<std::string, std::string>> file_digests_;

  // In-order hashing (digest_files). Tensors of a shard are contiguous and
  // in index order, so a shard's final prefix ends at its first tensor not
  // yet done.
  std::mutex hash_mu_;
  std::condition_variable hash_cv_;
  std::vector<bool> done_ ABSL_GUARDED_BY(hash_mu_);
  std::vector<size_t> next_tensor_ ABSL_GUARDED_BY(hash_mu_);  // per shard
  std::vector<uint64_t> ready_ ABSL_GUARDED_BY(hash_mu_);      // final bytes
  std::vector<uint64_t> hashed_ ABSL_GUARDED_BY(hash_mu_);
  bool closing_ ABSL_GUARDED_BY(hash_mu_) = false;  // drain, then exit
  bool aborted_ ABSL_GUARDED_BY(hash_mu_) = false;  // exit now
  absl::Status hash_error_ ABSL_GUARDED_BY(hash_mu_);
  std::vector<std::unique_ptr<Sha256>> shard_hashes_;  // one per shard
  std::thread hasher_;

  // Background syncs (sync_every_bytes). A failed fdatasync is kept and
  // fails Commit(): the kernel reports a writeback error to one sync of a
  // file description only, so Commit()'s fsync might not see it again.
  std::mutex sync_mu_;
  std::condition_variable sync_cv_;
  std::vector<bool> sync_wanted_ ABSL_GUARDED_BY(sync_mu_);  // per shard
  bool sync_stop_ ABSL_GUARDED_BY(sync_mu_) = false;
  absl::Status sync_error_ ABSL_GUARDED_BY(sync_mu_);
  std::atomic<int> background_syncs_{0};
  std::thread syncer_;
  std::string temp_dir_;
  bool committed_ = false;
};

// Parent-relative temporary names start with this, so tools can ignore them.
constexpr char kTempSuffix[] = ".mergeserve-tmp-";

// A writer of one model.safetensors in `output_dir` (replaced at Commit):
// for converted inputs (.bin checkpoints, models with a LoRA merged in).
absl::StatusOr<std::unique_ptr<ShardedWriter>> SingleFileWriter(
    const std::string& output_dir, std::vector<TensorSpec> tensors);

}  // namespace mergeserve

#endif  // MERGESERVE_FORMAT_SAFETENSORS_WRITER_H_
