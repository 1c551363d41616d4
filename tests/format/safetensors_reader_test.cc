#include "mergeserve/format/safetensors_reader.h"

#include <cstring>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;
using testing::WriteFile;

std::string Le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i)
    s[static_cast<size_t>(i)] = static_cast<char>(v >> (8 * i));
  return s;
}

std::string FileWith(const std::string& header, const std::string& data) {
  return Le64(header.size()) + header + data;
}

absl::Status OpenBytes(const std::string& bytes,
                       std::string* path_out = nullptr) {
  const std::string path = TempDir("st") + "/x.safetensors";
  WriteFile(path, bytes);
  if (path_out) *path_out = path;
  return SafetensorsReader::Open(path).status();
}

TEST(SafetensorsReaderTest, ReadsTensorsAndMetadataZeroCopy) {
  float vals[3] = {1.f, 2.f, 3.f};
  std::string data(reinterpret_cast<char*>(vals), 12);
  data += std::string("\x01\x02", 2);
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"U8","shape":[2],"data_offsets":[12,14]},)"
      R"("a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})";
  const std::string path = TempDir("ok") + "/m.safetensors";
  WriteFile(path, FileWith(header, data));
  auto r = SafetensorsReader::Open(path);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ((*r)->tensors().size(), 2u);
  EXPECT_EQ((*r)->tensors()[0].name, "a");  // name order
  EXPECT_EQ((*r)->metadata().at("format"), "pt");
  const TensorInfo* a = (*r)->Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, DType::kF32);
  TensorView v = (*r)->View(*a);
  EXPECT_EQ(v.data,
            (*r)->file().data() + 8 + header.size());  // points into the map
  float got[3];
  std::memcpy(got, v.data, 12);
  EXPECT_EQ(got[2], 3.f);
  EXPECT_EQ((*r)->Find("missing"), nullptr);
}

struct BadCase {
  const char* name;
  std::string bytes;
  const char* message;
};

TEST(SafetensorsReaderTest, RejectsEveryKindOfCorruptionWithAClearError) {
  const std::string f4(4, '\0');
  const std::vector<BadCase> cases = {
      {"short", "abc", "shorter than the 8-byte header length"},
      {"huge header", Le64(200ull << 20) + "{}", "exceeds"},
      {"header past end", Le64(100) + "{}", "runs past the end"},
      {"not json", FileWith("{nope", ""), "not valid JSON"},
      {"not object", FileWith("[1]     ", ""), "not a JSON object"},
      {"unknown dtype",
       FileWith(R"({"a":{"dtype":"F12","shape":[1],"data_offsets":[0,4]}})",
                f4),
       "unknown dtype 'F12'"},
      {"size mismatch",
       FileWith(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})",
                f4),
       "shape x dtype is 8 bytes but data_offsets span 4"},
      {"offset out of bounds",
       FileWith(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                f4),
       "past the data section"},
      {"negative dim",
       FileWith(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})",
                f4),
       "negative"},
      {"overflow",
       FileWith(
           R"({"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,4]}})",
           f4),
       "overflows"},
      {"begin after end",
       FileWith(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", f4),
       "begin > end"},
      {"overlap",
       FileWith(
           R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})",
           f4),
       "overlaps"},
      {"gap",
       FileWith(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})", f4),
       "gap of 2 bytes"},
      {"trailing",
       FileWith(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", f4),
       "2 trailing bytes"},
      {"bad metadata", FileWith(R"({"__metadata__":{"k":1}})", ""),
       "__metadata__ value for 'k' is not a string"},
      {"unknown field",
       FileWith(
           R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4],"x":1}})",
           f4),
       "unknown field 'x'"},
      {"missing offsets", FileWith(R"({"a":{"dtype":"U8","shape":[4]}})", f4),
       "data_offsets must be [begin, end]"},
  };
  for (const BadCase& c : cases) {
    std::string path;
    absl::Status s = OpenBytes(c.bytes, &path);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << c.name << ": " << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.message)) << c.name;
    EXPECT_THAT(std::string(s.message()), HasSubstr(path)) << c.name;
  }
}

TEST(SafetensorsReaderTest, MissingFileIsNotFound) {
  auto r = SafetensorsReader::Open("/nonexistent/x.safetensors");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("/nonexistent/x.safetensors"));
}

}  // namespace
}  // namespace mergeserve
