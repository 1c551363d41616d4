#include "mergeserve/base/sha256.h"

#include <cstdint>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {

using testing::TempDir;

// FIPS 180-2's examples.
TEST(Sha256Test, KnownDigests) {
  EXPECT_EQ(Sha256Hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(
      Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
      "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Sha256Hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

// A result's digest is computed as it is written, in whatever pieces the
// writer has: any split gives the one-shot digest.
TEST(Sha256Test, IncrementalPiecesGiveTheOneShotDigest) {
  std::string bytes(3 * 1000 * 1000 + 17, '\0');
  uint32_t x = 12345;
  for (char& c : bytes) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  const std::string whole = Sha256Hex(bytes);
  for (size_t piece : {1u, 63u, 64u, 65u, 4096u, 1u << 20}) {
    Sha256 h;
    size_t at = 0;
    // Uneven pieces: piece, then 1 byte, then piece again.
    for (bool big = true; at < bytes.size(); big = !big) {
      const size_t n = std::min(big ? piece : 1, bytes.size() - at);
      h.Update(bytes.data() + at, n);
      at += n;
    }
    EXPECT_EQ(h.HexDigest(), whole) << "pieces of " << piece;
  }
  Sha256 empty_updates;
  empty_updates.Update(nullptr, 0);
  empty_updates.Update(bytes.data(), bytes.size());
  empty_updates.Update(bytes.data(), 0);
  EXPECT_EQ(empty_updates.HexDigest(), whole);
}

// Files are read in 1 MiB blocks: sizes around the block edge.
TEST(Sha256Test, FileDigestMatchesItsBytes) {
  const std::string dir = TempDir("sha256");
  for (size_t size :
       {size_t{0}, size_t{1} << 20, (size_t{1} << 20) + 1, size_t{2500000}}) {
    std::string bytes(size, '\0');
    for (size_t i = 0; i < size; ++i) bytes[i] = static_cast<char>(i * 31);
    const std::string path = dir + "/f" + std::to_string(size);
    std::ofstream(path, std::ios::binary) << bytes;
    auto digest = Sha256File(path);
    ASSERT_TRUE(digest.ok()) << digest.status();
    EXPECT_EQ(*digest, Sha256Hex(bytes)) << size << " bytes";
  }
}

TEST(Sha256Test, UnreadableFilesNameThePath) {
  const std::string dir = TempDir("sha256_missing");
  auto missing = Sha256File(dir + "/nope.safetensors");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("nope.safetensors"),
            std::string::npos);
  auto folder = Sha256File(dir);
  EXPECT_EQ(folder.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(folder.status().message().find(dir), std::string::npos);
}

}  // namespace
}  // namespace mergeserve
