#include "mergeserve/format/safetensors_writer.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "mergeserve/base/sha256.h"
#include "mergeserve/format/model_folder.h"
#include "nlohmann/json.hpp"
#include "test_util.h"

namespace mergeserve {
namespace {
namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::TempDir;

std::vector<TensorSpec> Specs() {
  return {{"a", DType::kF32, {4}},
          {"b", DType::kF32, {4}},
          {"c", DType::kBF16, {2, 2}}};
}

bool HasTempSibling(const std::string& parent) {
  for (const auto& e : fs::directory_iterator(parent)) {
    if (e.path().filename().string().find(kTempSuffix) != std::string::npos)
      return true;
  }
  return false;
}

TEST(ShardedWriterTest, WritesShardsWithIndexAndHfNames) {
  const std::string out = TempDir("w") + "/model";
  ShardedWriter::Options o;
  o.output_dir = out;
  o.max_shard_bytes = 20;  // a + b (32 bytes) cannot share a shard
  auto w = ShardedWriter::Create(o, Specs());
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->num_shards(), 3);
  float v[4] = {1, 2, 3, 4};
  uint16_t h[4] = {0x3f80, 0x4000, 0x4040, 0x4080};
  ASSERT_TRUE((*w)->Write(1, 0, v, 16).ok());  // any order
  ASSERT_TRUE((*w)->Write(0, 8, v + 2, 8).ok());
  ASSERT_TRUE((*w)->Write(0, 0, v, 8).ok());
  ASSERT_TRUE((*w)->Write(2, 0, h, 8).ok());
  EXPECT_FALSE((*w)->Write(2, 4, h, 8).ok());  // past the tensor
  EXPECT_FALSE(fs::exists(out));  // nothing under the final name yet
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_TRUE(fs::exists(out + "/model-00001-of-00003.safetensors"));
  EXPECT_TRUE(fs::exists(out + "/model-00003-of-00003.safetensors"));
  std::ifstream in(out + "/model.safetensors.index.json");
  auto index = nlohmann::json::parse(in);
  EXPECT_EQ(index["weight_map"]["b"], "model-00002-of-00003.safetensors");
  EXPECT_EQ(index["metadata"]["total_size"], 40);
  auto m = testing::ReadModel(out);
  EXPECT_EQ(m["a"], std::vector<float>({1, 2, 3, 4}));
  EXPECT_EQ(m["c"], std::vector<float>({1, 2, 3, 4}));
  EXPECT_FALSE(HasTempSibling(fs::path(out).parent_path().string()));
}

// Three tensors of 3 MiB over two shards: the hasher reads several 1 MiB
// blocks per shard, and its prefixes depend on the order of TensorDone().
std::vector<TensorSpec> BigSpecs() {
  const int64_t n = int64_t{3} << 18;  // 3 MiB of f32
  return {{"x", DType::kF32, {n}},
          {"y", DType::kF32, {n}},
          {"z", DType::kF32, {n}}};
}

// Writes tensor `i` in 64 KiB pieces from two threads, high offsets first.
void WriteBig(ShardedWriter& w, size_t i) {
  const uint64_t bytes = w.tensors()[i].nbytes();
  const uint64_t piece = 64 << 10;
  auto half = [&](uint64_t parity) {
    std::vector<float> v(piece / 4);
    for (uint64_t off = bytes; off >= piece; off -= piece) {
      const uint64_t at = off - piece;
      if ((at / piece) % 2 != parity) continue;
      for (size_t k = 0; k < v.size(); ++k) {
        v[k] = static_cast<float>(i * 1000003 + at / 4 + k);
      }
      ASSERT_TRUE(w.Write(i, at, v.data(), piece).ok());
    }
  };
  std::thread a(half, 0), b(half, 1);
  a.join();
  b.join();
}

std::map<std::string, std::string> HashFolder(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    auto h = Sha256File(e.path().string());
    EXPECT_TRUE(h.ok()) << h.status();
    out[e.path().filename().string()] = h.ok() ? *h : "";
  }
  return out;
}

TEST(ShardedWriterTest, DigestsEveryFileAsTheShardsAreWritten) {
  // The server records these digests instead of reading its result back:
  // they must equal a hash of the committed files, whatever order the
  // tensors finish in and whether TensorDone() was called at all.
  for (const std::vector<size_t>& done_order :
       std::vector<std::vector<size_t>>{{0, 1, 2}, {2, 0, 1}, {1}, {}}) {
    SCOPED_TRACE(::testing::PrintToString(done_order));
    const std::string out = TempDir("w") + "/model";
    ShardedWriter::Options o;
    o.output_dir = out;
    o.max_shard_bytes = 7 << 20;  // x + y share a shard, z has its own
    o.digest_files = true;
    auto w = ShardedWriter::Create(o, BigSpecs());
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_EQ((*w)->num_shards(), 2);
    for (size_t i : done_order) {
      WriteBig(**w, i);
      (*w)->TensorDone(i);
    }
    for (size_t i = 0; i < 3; ++i) {
      if (std::find(done_order.begin(), done_order.end(), i) ==
          done_order.end()) {
        WriteBig(**w, i);
      }
    }
    ASSERT_TRUE((*w)->AddFile("config.json", "{\"a\": 1}\n").ok());
    ASSERT_TRUE((*w)->Commit().ok());
    const std::map<std::string, std::string> expected = HashFolder(out);
    EXPECT_EQ(expected.size(), 4u);  // 2 shards, the index, config.json
    const std::map<std::string, std::string> got((*w)->file_digests().begin(),
                                                 (*w)->file_digests().end());
    EXPECT_EQ(got, expected);
    auto m = testing::ReadModel(out);
    EXPECT_EQ(m["z"][5], static_cast<float>(2 * 1000003 + 5));
  }
}

TEST(ShardedWriterTest, HashesATensorOnlyOnceItIsDone) {
  // y first holds other bytes; x is then marked done and the hasher given
  // time to run. A hasher that read past x would hash those bytes.
  const std::string out = TempDir("w") + "/model";
  ShardedWriter::Options o;
  o.output_dir = out;
  o.digest_files = true;
  auto w = ShardedWriter::Create(o, BigSpecs());
  ASSERT_TRUE(w.ok()) << w.status();
  std::vector<float> junk((*w)->tensors()[1].nbytes() / 4, -1.0f);
  ASSERT_TRUE((*w)->Write(1, 0, junk.data(), junk.size() * 4).ok());
  WriteBig(**w, 0);
  (*w)->TensorDone(0);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  WriteBig(**w, 1);
  (*w)->TensorDone(1);
  WriteBig(**w, 2);
  (*w)->TensorDone(2);
  ASSERT_TRUE((*w)->Commit().ok());
  ASSERT_EQ((*w)->file_digests().size(), 1u);
  EXPECT_EQ((*w)->file_digests()[0].second,
            HashFolder(out)["model.safetensors"]);
}

TEST(ShardedWriterTest, DroppingTheCacheKeepsTheContent) {
  const std::string out = TempDir("w") + "/model";
  ShardedWriter::Options o;
  o.output_dir = out;
  o.drop_cached = true;
  auto w = ShardedWriter::Create(o, BigSpecs());
  ASSERT_TRUE(w.ok()) << w.status();
  for (size_t i = 0; i < 3; ++i) WriteBig(**w, i);
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_TRUE((*w)->file_digests().empty());  // not asked for
  auto m = testing::ReadModel(out);
  ASSERT_EQ(m["y"].size(), size_t{3} << 18);
  EXPECT_EQ(m["y"].back(), static_cast<float>(1000003 + (3 << 18) - 1));
}

// Polls `done` for up to a minute (a loaded CI machine may be slow to run
// a background thread); whether it became true.
bool WaitFor(const std::function<bool()>& done) {
  for (int i = 0; i < 12000 && !done(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return done();
}

// Every sync_every_bytes written, the syncer thread syncs the shard while
// writing goes on (two writer threads race on the byte count); the result
// is the same bytes, and a writer abandoned mid-sync joins its syncer.
TEST(ShardedWriterTest, SyncsInTheBackgroundAsBytesPileUp) {
  const std::string parent = TempDir("w");
  ShardedWriter::Options o;
  o.output_dir = parent + "/model";
  o.sync_every_bytes = 1 << 20;
  auto w = ShardedWriter::Create(o, BigSpecs());
  ASSERT_TRUE(w.ok()) << w.status();
  WriteBig(**w, 0);
  // Asked for at least twice (3 MiB); done asynchronously.
  EXPECT_TRUE(WaitFor([&] { return (*w)->background_syncs() >= 1; }));
  WriteBig(**w, 1);
  WriteBig(**w, 2);
  ASSERT_TRUE((*w)->Commit().ok());
  auto m = testing::ReadModel(o.output_dir);
  ASSERT_EQ(m["z"].size(), size_t{3} << 18);
  EXPECT_EQ(m["x"].back(), static_cast<float>((3 << 18) - 1));
  EXPECT_EQ(m["z"].front(), 2000006.f);

  o.output_dir = parent + "/abandoned";
  {
    auto a = ShardedWriter::Create(o, BigSpecs());
    ASSERT_TRUE(a.ok()) << a.status();
    WriteBig(**a, 0);
  }  // destroyed with a sync wanted or in flight
  EXPECT_FALSE(fs::exists(parent + "/abandoned"));
  EXPECT_FALSE(HasTempSibling(parent));
}

// A background_datasync that fails with EIO and counts its calls.
std::function<int(int)> FailingSync(std::atomic<int>* calls) {
  return [calls](int) {
    calls->fetch_add(1);
    errno = EIO;
    return -1;
  };
}

// A background sync that fails (a device failing writeback) fails
// Commit(), though the kernel would report the error to that sync only and
// Commit()'s own fsync succeeds; a retried Commit() fails the same way, and
// nothing reaches the output folder.
TEST(ShardedWriterTest, FailedBackgroundSyncFailsCommit) {
  const std::string parent = TempDir("w");
  ShardedWriter::Options o;
  o.output_dir = parent + "/model";
  o.sync_every_bytes = 1 << 20;
  std::atomic<int> calls{0};
  o.background_datasync = FailingSync(&calls);
  {
    auto w = ShardedWriter::Create(o, BigSpecs());
    ASSERT_TRUE(w.ok()) << w.status();
    for (size_t i = 0; i < 3; ++i) WriteBig(**w, i);
    // Commit() stops the syncer, which then skips a sync it was asked for
    // but had not started: wait until it has run one.
    ASSERT_TRUE(WaitFor([&] { return calls.load() >= 1; }));
    const absl::Status first = (*w)->Commit();
    EXPECT_GE(calls.load(), 1);
    EXPECT_EQ(first.code(), absl::StatusCode::kInternal) << first;
    EXPECT_THAT(std::string(first.message()),
                AllOf(HasSubstr("cannot sync"), HasSubstr("model.safetensors"),
                      HasSubstr("Input/output error")));
    EXPECT_EQ((*w)->Commit(), first);
    EXPECT_FALSE(fs::exists(o.output_dir));
  }
  EXPECT_FALSE(HasTempSibling(parent));

  // A full thin-provisioned disk fails writeback with ENOSPC.
  o.output_dir = parent + "/full";
  calls = 0;
  o.background_datasync = [&calls](int) {
    calls.fetch_add(1);
    errno = ENOSPC;
    return -1;
  };
  auto w = ShardedWriter::Create(o, BigSpecs());
  ASSERT_TRUE(w.ok()) << w.status();
  for (size_t i = 0; i < 3; ++i) WriteBig(**w, i);
  ASSERT_TRUE(WaitFor([&] { return calls.load() >= 1; }));
  EXPECT_EQ((*w)->Commit().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(fs::exists(o.output_dir));
}

// A scratch output (a sweep point, a stage) is not synced at all: with
// syncs that would all fail, it still commits, whole.
TEST(ShardedWriterTest, ScratchOutputsAreNeverSynced) {
  ShardedWriter::Options o;
  o.output_dir = TempDir("w") + "/scratch";
  o.sync_every_bytes = 1 << 20;
  o.durable = false;
  std::atomic<int> background{0}, commit{0};
  o.background_datasync = FailingSync(&background);
  o.commit_fsync = FailingSync(&commit);
  auto w = ShardedWriter::Create(o, BigSpecs());
  ASSERT_TRUE(w.ok()) << w.status();
  for (size_t i = 0; i < 3; ++i) WriteBig(**w, i);
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_EQ(background.load(), 0);
  EXPECT_EQ(commit.load(), 0);
  EXPECT_EQ((*w)->background_syncs(), 0);
  EXPECT_EQ(testing::ReadModel(o.output_dir)["y"].size(), size_t{3} << 18);
  // The same writer, durable: Commit()'s failing fsync fails it, naming
  // the shard, and nothing reaches the output folder.
  o.output_dir = TempDir("w") + "/durable";
  o.durable = true;
  o.background_datasync = nullptr;
  auto d = ShardedWriter::Create(o, BigSpecs());
  ASSERT_TRUE(d.ok()) << d.status();
  for (size_t i = 0; i < 3; ++i) WriteBig(**d, i);
  const absl::Status failed = (*d)->Commit();
  EXPECT_EQ(failed.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(failed.message()),
              AllOf(HasSubstr("cannot sync"), HasSubstr("model.safetensors")));
  EXPECT_GE(commit.load(), 1);
  EXPECT_FALSE(fs::exists(o.output_dir));
}

// Without background syncs (0) no syncer runs: Commit() alone syncs.
TEST(ShardedWriterTest, SyncsOnlyAtCommitWhenAskedTo) {
  ShardedWriter::Options o;
  o.output_dir = TempDir("w") + "/model";
  o.sync_every_bytes = 0;
  auto w = ShardedWriter::Create(o, BigSpecs());
  ASSERT_TRUE(w.ok()) << w.status();
  for (size_t i = 0; i < 3; ++i) WriteBig(**w, i);
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_EQ((*w)->background_syncs(), 0);
  EXPECT_EQ(testing::ReadModel(o.output_dir)["y"].size(), size_t{3} << 18);
}

TEST(ShardedWriterTest, AbandonedWriterStopsItsHasher) {
  const std::string parent = TempDir("w");
  {
    ShardedWriter::Options o;
    o.output_dir = parent + "/model";
    o.digest_files = true;
    auto w = ShardedWriter::Create(o, BigSpecs());
    ASSERT_TRUE(w.ok()) << w.status();
    WriteBig(**w, 0);
    (*w)->TensorDone(0);
  }  // destroyed mid-merge: joins the hasher, removes the folder
  EXPECT_FALSE(fs::exists(parent + "/model"));
  EXPECT_FALSE(HasTempSibling(parent));
}

TEST(ShardedWriterTest, SingleShardIsModelSafetensorsWithoutIndex) {
  const std::string out = TempDir("w") + "/model";
  ShardedWriter::Options o;
  o.output_dir = out;
  auto w = ShardedWriter::Create(o, Specs());
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_TRUE(fs::exists(out + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(out + "/model.safetensors.index.json"));
}

TEST(ShardedWriterTest, AbandonedWriterLeavesNothingBehind) {
  const std::string parent = TempDir("w");
  const std::string out = parent + "/model";
  {
    ShardedWriter::Options o;
    o.output_dir = out;
    auto w = ShardedWriter::Create(o, Specs());
    ASSERT_TRUE(w.ok());
    EXPECT_TRUE(fs::exists((*w)->temp_dir()));
  }
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(HasTempSibling(parent));
}

TEST(ShardedWriterTest, RefusesNonEmptyOutputUnlessOverwrite) {
  const std::string out = TempDir("w") + "/model";
  fs::create_directories(out);
  testing::WriteFile(out + "/keep.txt", "precious");
  ShardedWriter::Options o;
  o.output_dir = out;
  auto w = ShardedWriter::Create(o, Specs());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(fs::exists(out + "/keep.txt"));
  o.overwrite = true;
  w = ShardedWriter::Create(o, Specs());
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_FALSE(fs::exists(out + "/keep.txt"));
  EXPECT_TRUE(fs::exists(out + "/model.safetensors"));
}

// A scratch output may take over an earlier one's shard (recycle_dir): the
// same file, so its cached pages, cut to the new size and rewritten whole;
// the earlier folder's other files go. A durable output never recycles.
TEST(ShardedWriterTest, ScratchOutputsOverwriteARecycledShardInPlace) {
  const std::string root = TempDir("w");
  ShardedWriter::Options o;
  o.output_dir = root + "/first";
  o.durable = false;
  auto first = ShardedWriter::Create(o, BigSpecs());
  ASSERT_TRUE(first.ok()) << first.status();
  for (size_t i = 0; i < 3; ++i) WriteBig(**first, i);
  ASSERT_TRUE((*first)->AddFile("extra.json", "{}").ok());
  ASSERT_TRUE((*first)->Commit().ok());
  // A second name for the file tells whether the next output is it.
  const std::string alias = root + "/alias";
  fs::create_hard_link(o.output_dir + "/model.safetensors", alias);

  std::vector<TensorSpec> two = BigSpecs();
  two.pop_back();
  ShardedWriter::Options r = o;
  r.output_dir = root + "/second";
  r.recycle_dir = o.output_dir;
  auto second = ShardedWriter::Create(r, two);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_FALSE(fs::exists(o.output_dir));  // taken over or removed
  for (size_t i = 0; i < 2; ++i) WriteBig(**second, i);
  ASSERT_TRUE((*second)->Commit().ok());
  EXPECT_EQ(fs::hard_link_count(r.output_dir + "/model.safetensors"), 2u);
  EXPECT_FALSE(fs::exists(r.output_dir + "/extra.json"));
  const auto model = testing::ReadModel(r.output_dir);
  ASSERT_EQ(model.size(), 2u);  // z, past the new end, is cut off
  const std::vector<float>& y = model.at("y");
  ASSERT_EQ(y.size(), size_t{3} << 18);
  for (size_t k = 0; k < y.size(); k += 4099) {
    EXPECT_EQ(y[k], static_cast<float>(1000003 + k)) << k;
  }

  // Durable: a new file; the folder handed over is removed all the same.
  ShardedWriter::Options d = r;
  d.output_dir = root + "/durable";
  d.recycle_dir = r.output_dir;
  d.durable = true;
  auto third = ShardedWriter::Create(d, two);
  ASSERT_TRUE(third.ok()) << third.status();
  for (size_t i = 0; i < 2; ++i) WriteBig(**third, i);
  ASSERT_TRUE((*third)->Commit().ok());
  EXPECT_FALSE(fs::exists(r.output_dir));
  EXPECT_EQ(fs::hard_link_count(d.output_dir + "/model.safetensors"), 1u);
  EXPECT_EQ(fs::hard_link_count(alias), 1u);
  EXPECT_EQ(testing::ReadModel(d.output_dir).at("y"), y);
  // The recycled file (still there under its other name) was cut to the
  // size a new one has.
  EXPECT_EQ(fs::file_size(alias),
            fs::file_size(d.output_dir + "/model.safetensors"));
}

}  // namespace
}  // namespace mergeserve
