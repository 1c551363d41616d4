#include "mergeserve/format/model_folder.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "mergeserve/format/safetensors_writer.h"
#include "test_util.h"

namespace mergeserve {
namespace {
using ::testing::HasSubstr;
using testing::TempDir;

TEST(ModelFolderTest, OpensShardedFolderThroughIndex) {
  const std::string out = TempDir("m") + "/model";
  ShardedWriter::Options o;
  o.output_dir = out;
  o.max_shard_bytes = 8;
  auto w = ShardedWriter::Create(o, {{"x", DType::kF32, {2}},
                                     {"y", DType::kF32, {2}},
                                     {"z", DType::kI64, {1}}});
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Commit().ok());
  auto m = ModelFolder::Open(out);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->shards().size(), 3u);
  ASSERT_EQ((*m)->tensors().size(), 3u);
  EXPECT_NE((*m)->Find("z"), nullptr);
  EXPECT_EQ((*m)->Find("z")->dtype, DType::kI64);
}

TEST(ModelFolderTest, IndexNamingAMissingTensorIsAnError) {
  const std::string out = TempDir("m") + "/model";
  testing::WriteModel(out, {{"x", {{2}, {1, 2}}}});
  testing::WriteFile(
      out + "/model.safetensors.index.json",
      R"({"weight_map":{"x":"model.safetensors","ghost":"model.safetensors"}})");
  auto m = ModelFolder::Open(out);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("ghost"));
}

TEST(ModelFolderTest, EmptyFolderIsNotFound) {
  auto m = ModelFolder::Open(TempDir("empty"));
  EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(m.status().message()),
              HasSubstr("no model.safetensors"));
}

}  // namespace
}  // namespace mergeserve
