// ForEachStagedChunk: passes read copies of their input windows (pread into
// huge-page buffers) instead of the mapping. Every mode must hand the chunk
// function exactly the values of the mapped tensor.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <mutex>
#include <random>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "mergeserve/engine/executor.h"
#include "mergeserve/engine/merge_method.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using ::testing::HasSubstr;

class StagingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempDir("staging");
    std::mt19937 rng(3);
    testing::TestModel base;
    // 37 x 1001: not a multiple of the chunk (64) nor of any window.
    base["w"] = {
        {37, 1001}, testing::RandomValues(37 * 1001, rng), DType::kBF16};
    base["v"] = {{300}, testing::RandomValues(300, rng), DType::kF32};
    testing::WriteExperts(dir_, base, 2, rng, 0.1f);
    auto config = MergeConfig::FromYaml(
        "merge_method: ties\nbase_model: base\nmodels: [e0, e1]\n", dir_);
    ASSERT_TRUE(config.ok());
    auto plan = MergePlan::Create(*config, LocalPathResolver(dir_));
    ASSERT_TRUE(plan.ok()) << plan.status();
    plan_ = *std::move(plan);
  }

  const PlannedTensor& Tensor(const std::string& name) const {
    for (const PlannedTensor& t : plan_->tensors()) {
      if (t.name == name) return t;
    }
    std::abort();
  }

  // Every input's values as the chunk function saw them: [base, e0, e1].
  absl::StatusOr<std::vector<std::vector<float>>> Read(
      const PlannedTensor& t, StagingArena* arena, std::vector<int> models) {
    std::vector<std::vector<float>> seen(
        models.size() + 1, std::vector<float>(static_cast<size_t>(t.numel)));
    ThreadPool pool(2);
    const int64_t chunk = 64;
    absl::Status st = ForEachStagedChunk(
        pool, arena, t, /*base=*/true, models, chunk,
        [&](int64_t ci, int, const PlannedTensor& in) {
          const int64_t begin = ci * chunk;
          const int64_t n = std::min(chunk, t.numel - begin);
          LoadDelta(in.base, begin, n, nullptr, seen[0].data() + begin);
          for (size_t k = 0; k < models.size(); ++k) {
            LoadDelta(in.models[static_cast<size_t>(models[k])], begin, n,
                      nullptr, seen[k + 1].data() + begin);
          }
        });
    if (!st.ok()) return st;
    return seen;
  }

  std::vector<std::vector<float>> Mapped(const PlannedTensor& t) {
    auto r = Read(t, nullptr, {0, 1});
    EXPECT_TRUE(r.ok());
    return *r;
  }

  std::string dir_;
  std::unique_ptr<MergePlan> plan_;
};

TEST_F(StagingTest, WindowsAndWholeTensorsGiveTheMappedValues) {
  for (const char* name : {"w", "v"}) {
    const PlannedTensor& t = Tensor(name);
    const auto expect = Mapped(t);
    // Windows of 3 KiB of inputs (a few chunks, the last one short).
    StagingArena windows(3000, 0);
    auto a = Read(t, &windows, {0, 1});
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ(*a, expect) << name;
    EXPECT_EQ(windows.held, nullptr);
    // Whole, held for the next pass.
    StagingArena whole;
    auto b = Read(t, &whole, {0, 1});
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(*b, expect) << name;
    EXPECT_EQ(whole.held, &t);
  }
}

TEST_F(StagingTest, HeldTensorIsNotReadAgainAndOthersAre) {
  const PlannedTensor& w = Tensor("w");
  const PlannedTensor& v = Tensor("v");
  const auto expect_w = Mapped(w);
  StagingArena arena;
  ASSERT_TRUE(Read(w, &arena, {0, 1}).ok());
  // Truncate e1's file: a pass that read it again would fail with
  // DATA_LOSS. Passes over the held tensor (all inputs, or a subset) use
  // the copies.
  const std::string shard = dir_ + "/e1/model.safetensors";
  ASSERT_TRUE(std::filesystem::exists(shard));
  ASSERT_EQ(::truncate(shard.c_str(), 100), 0);
  auto again = Read(w, &arena, {0, 1});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, expect_w);
  auto subset = Read(w, &arena, {1});
  ASSERT_TRUE(subset.ok()) << subset.status();
  EXPECT_EQ((*subset)[1], expect_w[2]);
  // Another tensor is read from the files: e1's is gone now.
  auto other = Read(v, &arena, {0, 1});
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(other.status().message()),
              HasSubstr("model.safetensors"));
  // A failed staging holds nothing: w is read again, and fails too.
  EXPECT_EQ(arena.held, nullptr);
  EXPECT_FALSE(Read(w, &arena, {0, 1}).ok());
}

// Pages of a view's bytes that are in the page cache (mincore on the
// file's mapping, which reports the cache whether or not they are mapped).
size_t ResidentPages(const TensorView& v) {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(v.data) / page * page;
  const uintptr_t end = reinterpret_cast<uintptr_t>(v.data) + v.info->nbytes;
  std::vector<unsigned char> in((end - begin + page - 1) / page);
  if (mincore(reinterpret_cast<void*>(begin), end - begin, in.data()) != 0) {
    return 0;
  }
  size_t n = 0;
  for (unsigned char c : in) n += c & 1;
  return n;
}

size_t Pages(const TensorView& v) {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(v.data) / page * page;
  const uintptr_t end = reinterpret_cast<uintptr_t>(v.data) + v.info->nbytes;
  return (end - begin + page - 1) / page;
}

// Drops the views' files from the page cache (all but the pages the plan
// has mapped); returns how many of their pages stay cached.
size_t DropPages(const std::vector<const TensorView*>& views) {
  for (const TensorView* v : views) {
    const int fd = ::open(v->file->path().c_str(), O_RDONLY);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::fdatasync(fd), 0);  // clean pages can be dropped
    EXPECT_EQ(::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
    ::close(fd);
  }
  size_t resident = 0;
  for (const TensorView* v : views) resident += ResidentPages(*v);
  return resident;
}

// Waits (up to 20 s: the prefetch is asynchronous) until every page of
// `views` is cached; returns how many are.
size_t WaitResident(const std::vector<const TensorView*>& views) {
  size_t resident = 0, pages = 0;
  for (const TensorView* v : views) pages += Pages(*v);
  for (int i = 0; i < 2000; ++i) {
    resident = 0;
    for (const TensorView* v : views) resident += ResidentPages(*v);
    if (resident == pages) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return resident;
}

size_t PagesOf(const std::vector<const TensorView*>& views) {
  size_t pages = 0;
  for (const TensorView* v : views) pages += Pages(*v);
  return pages;
}

// The executor prefetches the next tensor's inputs: pages the kernel
// dropped come back into the page cache without a read of the process.
TEST_F(StagingTest, PrefetchBringsEveryInputIntoThePageCache) {
  const PlannedTensor& w = Tensor("w");
  const std::vector<const TensorView*> views = {&w.base, &w.models[0],
                                                &w.models[1]};
  // Otherwise this file system keeps them (tmpfs) and the test shows
  // nothing: it must run on a disk-backed TEST_TMPDIR.
  ASSERT_LT(DropPages(views), PagesOf(views))
      << "the inputs' pages could not be dropped";
  PrefetchInputs(w, StagingArena::kHoldBytes);
  EXPECT_EQ(WaitResident(views), PagesOf(views));
}

// A pass that reads one expert (a whole-model selection's pass over one
// model) prefetches that expert only: the other inputs stay on the disk.
TEST_F(StagingTest, PrefetchOfOnePassReadsOnlyItsInputs) {
  const PlannedTensor& w = Tensor("w");
  const std::vector<const TensorView*> read = {&w.models[1]};
  const std::vector<const TensorView*> unread = {&w.base, &w.models[0]};
  ASSERT_LT(DropPages(read), PagesOf(read))
      << "the inputs' pages could not be dropped";
  const size_t kept = DropPages(unread);
  ASSERT_LT(kept, PagesOf(unread));
  PrefetchInputs(w, StagingArena::kHoldBytes, /*base=*/false, {1});
  EXPECT_EQ(WaitResident(read), PagesOf(read));
  size_t resident = 0;
  for (const TensorView* v : unread) resident += ResidentPages(*v);
  EXPECT_EQ(resident, kept);
}

}  // namespace
}  // namespace mergeserve
