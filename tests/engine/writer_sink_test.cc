#include "engine/writer_sink.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <thread>

#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using testing::TempDir;

// A tensor of `numel` elements, out_dtype f32, and a writer for it.
struct Fixture {
  explicit Fixture(int64_t numel, const std::string& name) {
    tensor.name = "w";
    tensor.numel = numel;
    tensor.out_dtype = DType::kF32;
    ShardedWriter::Options o;
    o.output_dir = TempDir(name) + "/model";
    dir = o.output_dir;
    auto w = ShardedWriter::Create(o, {{"w", DType::kF32, {numel}}});
    EXPECT_TRUE(w.ok()) << w.status();
    writer = std::move(*w);
  }
  // Finishes `sink`, commits and reads the tensor back.
  std::vector<float> Commit(WriterSink& sink) {
    EXPECT_TRUE(sink.Finish().ok());
    EXPECT_TRUE(writer->Commit().ok());
    return testing::ReadModel(dir)["w"];
  }
  PlannedTensor tensor;
  std::string dir;
  std::unique_ptr<ShardedWriter> writer;
};

// Pieces of [0, numel) (chunk sizes that straddle the regions), in a
// shuffled order, written from two threads: every element lands where it
// belongs and the regions are written whole.
TEST(WriterSinkTest, GathersPiecesWrittenInAnyOrderFromManyThreads) {
  const int64_t numel = 2 * WriterSink::kRegionElems + 12345;
  Fixture f(numel, "sink_order");
  std::vector<float> values(static_cast<size_t>(numel));
  std::iota(values.begin(), values.end(), 0.0f);
  std::vector<std::pair<int64_t, int64_t>> pieces;
  for (int64_t b = 0; b < numel; b += 40000) {
    pieces.push_back({b, std::min<int64_t>(40000, numel - b)});
  }
  std::shuffle(pieces.begin(), pieces.end(), std::mt19937(7));
  WriterSink sink(*f.writer, 0, f.tensor, /*reject_non_finite=*/true);
  auto write_half = [&](size_t first) {
    for (size_t i = first; i < pieces.size(); i += 2) {
      const auto [b, n] = pieces[i];
      ASSERT_TRUE(sink.WriteF32(b, values.data() + b, n).ok());
    }
  };
  std::thread other(write_half, 1);
  write_half(0);
  other.join();
  EXPECT_EQ(f.Commit(sink), values);
}

TEST(WriterSinkTest, WholeRegionPiecesAreWrittenDirectly) {
  const int64_t numel = WriterSink::kRegionElems + 5;
  Fixture f(numel, "sink_whole");
  std::vector<float> values(static_cast<size_t>(numel), 2.5f);
  WriterSink sink(*f.writer, 0, f.tensor, true);
  ASSERT_TRUE(sink.WriteF32(0, values.data(), numel).ok());
  EXPECT_EQ(f.Commit(sink), values);
}

TEST(WriterSinkTest, ElementsLeftUnwrittenFailFinishNamingThem) {
  const int64_t numel = WriterSink::kRegionElems + 100;
  Fixture f(numel, "sink_gap");
  std::vector<float> values(static_cast<size_t>(numel), 1.0f);
  WriterSink sink(*f.writer, 0, f.tensor, true);
  ASSERT_TRUE(sink.WriteF32(0, values.data(), numel - 1).ok());
  const absl::Status st = sink.Finish();
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
  EXPECT_NE(st.message().find("'w'"), std::string::npos) << st;
  EXPECT_NE(st.message().find("unwritten"), std::string::npos) << st;
}

// A region the method never touched, and one written again after it was
// flushed, are caught too.
TEST(WriterSinkTest, UntouchedAndRewrittenRegionsAreErrors) {
  const int64_t numel = 3 * WriterSink::kRegionElems;
  std::vector<float> values(static_cast<size_t>(numel), 1.0f);
  Fixture f(numel, "sink_untouched");
  WriterSink sink(*f.writer, 0, f.tensor, true);
  ASSERT_TRUE(
      sink.WriteF32(0, values.data(), 2 * WriterSink::kRegionElems).ok());
  absl::Status st = sink.Finish();
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
  EXPECT_NE(st.message().find(std::to_string(2 * WriterSink::kRegionElems)),
            std::string::npos)
      << st;
  // Region 0 again: whole, then in pieces.
  st = sink.WriteF32(0, values.data(), WriterSink::kRegionElems);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << st;
  st = sink.WriteF32(100, values.data(), 50);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << st;
  EXPECT_NE(st.message().find("twice"), std::string::npos) << st;
}

TEST(WriterSinkTest, ElementsWrittenTwiceAreAnError) {
  Fixture f(1000, "sink_twice");
  std::vector<float> values(1000, 1.0f);
  WriterSink sink(*f.writer, 0, f.tensor, true);
  ASSERT_TRUE(sink.WriteF32(0, values.data(), 600).ok());
  const absl::Status st = sink.WriteF32(0, values.data(), 600);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << st;
  EXPECT_NE(st.message().find("twice"), std::string::npos) << st;
}

TEST(WriterSinkTest, NonFiniteValuesAreRejectedWithTheirElement) {
  Fixture f(1000, "sink_nan");
  std::vector<float> values(1000, 1.0f);
  values[700] = std::numeric_limits<float>::infinity();
  WriterSink sink(*f.writer, 0, f.tensor, true);
  ASSERT_TRUE(sink.WriteF32(0, values.data(), 500).ok());
  const absl::Status st = sink.WriteF32(500, values.data() + 500, 500);
  EXPECT_EQ(st.code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(st.message().find("element 700"), std::string::npos) << st;
  // Without the check the value is stored as it is.
  Fixture g(1000, "sink_nan_kept");
  WriterSink keep(*g.writer, 0, g.tensor, false);
  ASSERT_TRUE(keep.WriteF32(0, values.data(), 1000).ok());
  EXPECT_TRUE(std::isinf(g.Commit(keep)[700]));
}

}  // namespace
}  // namespace mergeserve
