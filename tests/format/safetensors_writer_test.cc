#include "mergeserve/format/safetensors_writer.h"

#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "mergeserve/format/model_folder.h"
#include "nlohmann/json.hpp"
#include "test_util.h"

namespace mergeserve {
namespace {
namespace fs = std::filesystem;
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

}  // namespace
}  // namespace mergeserve
