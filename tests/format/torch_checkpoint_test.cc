// pytorch_model.bin archives built here byte by byte: tensors (contiguous,
// transposed, at a storage offset) read as torch would, and pickles that
// name any other global, reach past their storage or are compressed are
// refused, naming the file, with nothing run.
#include "mergeserve/format/torch_checkpoint.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "mergeserve/format/model_folder.h"
#include "test_util.h"

namespace mergeserve {
namespace {
namespace fs = std::filesystem;
using ::testing::HasSubstr;

void Put(std::string& out, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}

// A zip archive of stored entries (CRCs left 0: the reader does not use
// them). `method` 8 marks the entries deflated, to test the refusal.
std::string Zip(const std::vector<std::pair<std::string, std::string>>& files,
                int method = 0) {
  std::string out, dir;
  for (const auto& [name, data] : files) {
    const uint64_t local = out.size();
    Put(out, 0x04034b50, 4);
    Put(out, 20, 2), Put(out, 0, 2), Put(out, method, 2), Put(out, 0, 4);
    Put(out, 0, 4), Put(out, data.size(), 4), Put(out, data.size(), 4);
    Put(out, name.size(), 2), Put(out, 0, 2);
    out += name + data;
    Put(dir, 0x02014b50, 4);
    Put(dir, 20, 2), Put(dir, 20, 2), Put(dir, 0, 2), Put(dir, method, 2);
    Put(dir, 0, 4), Put(dir, 0, 4), Put(dir, data.size(), 4);
    Put(dir, data.size(), 4), Put(dir, name.size(), 2), Put(dir, 0, 2);
    Put(dir, 0, 2), Put(dir, 0, 2), Put(dir, 0, 2), Put(dir, 0, 4);
    Put(dir, local, 4);
    dir += name;
  }
  const uint64_t cd = out.size();
  out += dir;
  Put(out, 0x06054b50, 4), Put(out, 0, 2), Put(out, 0, 2);
  Put(out, files.size(), 2), Put(out, files.size(), 2);
  Put(out, dir.size(), 4), Put(out, cd, 4), Put(out, 0, 2);
  return out;
}

std::string U(const std::string& s) {  // SHORT_BINUNICODE
  return std::string("\x8c") + static_cast<char>(s.size()) + s;
}

// {name: tensor} with one float storage "0" of `numel` elements.
std::string StateDictPickle(const std::string& name, int offset,
                            std::vector<int> size, std::vector<int> stride,
                            int numel) {
  std::string p = "\x80\x02";
  p += "ccollections\nOrderedDict\n)R(";
  p += U(name);
  p += "ctorch._utils\n_rebuild_tensor_v2\n(";
  p += "(" + U("storage") + "ctorch\nFloatStorage\n" + U("0") + U("cpu");
  p += "K" + std::string(1, static_cast<char>(numel)) + "tQ";
  p += "K" + std::string(1, static_cast<char>(offset));
  p += "(";
  for (int s : size) p += "K" + std::string(1, static_cast<char>(s));
  p += "t(";
  for (int s : stride) p += "K" + std::string(1, static_cast<char>(s));
  p += "t\x89"
       "ccollections\nOrderedDict\n)R"
       "tR";
  p += "u.";
  return p;
}

std::string Floats(std::vector<float> v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

std::string Write(const std::string& dir, const std::string& bytes) {
  fs::create_directories(dir);
  const std::string path = dir + "/pytorch_model.bin";
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

TEST(TorchCheckpointTest, TransposedTensorsAtAnOffsetReadAsTorchWould) {
  const std::string dir = testing::TempDir("bin-ok");
  // Storage 0..7; the tensor is storage[1:7] as a 2x3 viewed transposed:
  // size (3, 2), stride (1, 3): rows (1, 4), (2, 5), (3, 6).
  Write(dir,
        Zip({{"archive/data.pkl", StateDictPickle("w", 1, {3, 2}, {1, 3}, 8)},
             {"archive/data/0", Floats({0, 1, 2, 3, 4, 5, 6, 7})},
             {"archive/version", "3\n"}}));
  auto folder = ModelFolder::Open(dir);
  ASSERT_TRUE(folder.ok()) << folder.status();
  const auto values = testing::ReadModel(dir);
  EXPECT_THAT(values.at("w"), ::testing::ElementsAre(1, 4, 2, 5, 3, 6));
  const TensorInfo* w = (*folder)->Find("w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->shape, (std::vector<int64_t>{3, 2}));
  // The converted copy goes away with the folder.
  const std::string converted =
      fs::path((*folder)->shards()[0]->path()).parent_path();
  EXPECT_TRUE(fs::exists(converted));
  folder->reset();
  EXPECT_FALSE(fs::exists(converted));
}

TEST(TorchCheckpointTest, APickleThatWouldRunCodeIsRefusedWithoutRunningIt) {
  const std::string dir = testing::TempDir("bin-evil");
  const std::string marker = dir + "/ran";
  // os.system("touch <marker>"), as pickle would call it.
  const std::string evil = std::string("\x80\x02") + "cposix\nsystem\n" +
                           U("touch " + marker) + "\x85R.";
  const std::string path =
      Write(dir, Zip({{"archive/data.pkl", evil}, {"archive/version", "3\n"}}));
  auto folder = ModelFolder::Open(dir);
  EXPECT_EQ(folder.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(folder.status().message()), HasSubstr(path));
  EXPECT_THAT(std::string(folder.status().message()),
              HasSubstr("global 'posix.system', which is not allowed"));
  EXPECT_FALSE(fs::exists(marker));
  // Other callables are refused the same way, by name.
  for (const char* global :
       {"builtins\neval\n", "torch\nload\n", "__builtin__\ngetattr\n"}) {
    const std::string p = std::string("\x80\x02") + "c" + global + ")R.";
    const std::string z = Zip({{"a/data.pkl", p}});
    auto r = ReadTorchArchive(
        "x.bin", reinterpret_cast<const uint8_t*>(z.data()), z.size());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << global;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("not allowed"));
  }
}

TEST(TorchCheckpointTest, MalformedArchivesAreNamedDataLoss) {
  auto read = [](const std::string& z) {
    return ReadTorchArchive("m.bin", reinterpret_cast<const uint8_t*>(z.data()),
                            z.size());
  };
  // A tensor that reaches past its storage.
  auto past = read(Zip({{"a/data.pkl", StateDictPickle("w", 2, {4}, {1}, 5)},
                        {"a/data/0", Floats({0, 1, 2, 3, 4})}}));
  EXPECT_EQ(past.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(past.status().message()),
              HasSubstr("'w' reaches past its storage"));
  auto compressed = read(Zip({{"a/data.pkl", "x"}}, /*method=*/8));
  EXPECT_THAT(std::string(compressed.status().message()),
              HasSubstr("is compressed"));
  EXPECT_EQ(read("not a zip at all, just text").status().code(),
            absl::StatusCode::kDataLoss);
  auto truncated = read(Zip({{"a/data.pkl", std::string("\x80\x02}(", 4)}}));
  EXPECT_THAT(std::string(truncated.status().message()), HasSubstr("m.bin"));
  auto legacy = read(Zip({{"a/other", "x"}}));
  EXPECT_THAT(std::string(legacy.status().message()), HasSubstr("no data.pkl"));
}

}  // namespace
}  // namespace mergeserve
