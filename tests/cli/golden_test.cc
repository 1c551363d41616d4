// Every worked case in ../shared/spec/golden through `mergeserve merge`,
// compared with the authors' results at the spec's tolerance: fp32 within
// 1e-5 of the tensor's scale, bf16 bit-exact or one ulp.
#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "gtest/gtest.h"
#include "mergeserve/format/model_folder.h"
#include "test_util.h"

namespace mergeserve {
namespace {
namespace fs = std::filesystem;

std::vector<std::string> GoldenCases() {
  std::vector<std::string> cases;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(MERGESERVE_GOLDEN_DIR, ec)) {
    if (fs::exists(e.path() / "config.yaml"))
      cases.push_back(e.path().filename());
  }
  std::sort(cases.begin(), cases.end());
  return cases;
}

TEST(GoldenTest, AllTwelveCasesArePresent) {
  // CI checks out ../shared beside the repo; a missing spec must fail, not
  // silently test nothing.
  EXPECT_EQ(GoldenCases().size(), 12u)
      << "golden cases not found under " << MERGESERVE_GOLDEN_DIR;
}

class GoldenCaseTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenCaseTest, MatchesExpected) {
  const fs::path dir = fs::path(MERGESERVE_GOLDEN_DIR) / GetParam();
  const std::string out = testing::TempDir("golden") + "/out";
  for (const char* backend : {"fused", "aten"}) {
    const std::string cmd = std::string(MERGESERVE_BINARY) + " merge " +
                            (dir / "config.yaml").string() + " " + out +
                            " --overwrite --quiet --backend " + backend +
                            " > /dev/null";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    auto expected_folder = ModelFolder::Open((dir / "expected").string());
    ASSERT_TRUE(expected_folder.ok());
    const auto got = testing::ReadModel(out);
    const auto expected = testing::ReadModel((dir / "expected").string());
    ASSERT_EQ(got.size(), expected.size());
    for (const auto& [name, want] : expected) {
      const auto& have = got.at(name);
      ASSERT_EQ(have.size(), want.size()) << name;
      const bool bf16 = (*expected_folder)->Find(name)->dtype == DType::kBF16;
      float scale = 0;
      for (float v : want) scale = std::max(scale, std::fabs(v));
      for (size_t j = 0; j < want.size(); ++j) {
        if (bf16) {
          const uint16_t a = F32ToBf16(have[j]), b = F32ToBf16(want[j]);
          EXPECT_LE(std::abs(static_cast<int>(a) - static_cast<int>(b)), 1)
              << GetParam() << " " << backend << " " << name << "[" << j << "]";
        } else {
          EXPECT_LE(std::fabs(have[j] - want[j]), 1e-5f * scale)
              << GetParam() << " " << backend << " " << name << "[" << j << "]";
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Spec, GoldenCaseTest,
                         ::testing::ValuesIn(GoldenCases()),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           return i.param;
                         });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(GoldenCaseTest);

}  // namespace
}  // namespace mergeserve
