// `mergeserve merge` on bad input: a non-zero exit that tells the failure
// kind apart, one clear message naming the thing, and nothing written.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_util.h"

namespace mergeserve {
namespace {
namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::TempDir;

struct Result {
  int exit_code;
  std::string output;
};

// Runs a shell command; its stdout and stderr together.
Result RunCommand(const std::string& cmd) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0)
    out.append(buf.data(), n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// `env`: assignments put before the command, e.g. "VAR=value".
Result RunCli(const std::string& args, const std::string& env = "") {
  return RunCommand(env + " " + std::string(MERGESERVE_BINARY) + " " + args);
}

class MergeCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir("cli");
    testing::WriteModel(dir_ + "/base", {{"a", {{2, 2}, {1, 2, 3, 4}}},
                                         {"b", {{3}, {1, 1, 1}}}});
    testing::WriteModel(
        dir_ + "/e0", {{"a", {{2, 2}, {2, 2, 3, 5}}}, {"b", {{3}, {1, 2, 1}}}});
    testing::WriteFile(dir_ + "/base/config.json",
                       R"({"torch_dtype": "float32", "x": 1})");
    testing::WriteFile(dir_ + "/base/tokenizer.json", "{}");
  }
  // Writes a config and runs it; the output must not appear on failure.
  Result Merge(const std::string& yaml, const std::string& flags = "",
               const std::string& env = "") {
    testing::WriteFile(dir_ + "/c.yaml", yaml);
    Result r = RunCli(
        "merge " + dir_ + "/c.yaml " + dir_ + "/out --quiet " + flags, env);
    if (r.exit_code != 0) {
      EXPECT_FALSE(fs::exists(dir_ + "/out")) << "output written on failure";
      for (const auto& e : fs::directory_iterator(dir_)) {
        EXPECT_EQ(e.path().filename().string().find(".mergeserve-tmp-"),
                  std::string::npos);
      }
    }
    return r;
  }
  std::string dir_;
};

constexpr char kTies[] =
    "merge_method: ties\nbase_model: base\nmodels:\n  - model: e0\n"
    "    parameters: {density: 0.5}\n";

TEST_F(MergeCliTest, SucceedsAndWritesAnHfFolder) {
  Result r = Merge(std::string(kTies) + "out_dtype: bfloat16\n", "--json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("\"tensors\":2"));
  EXPECT_TRUE(fs::exists(dir_ + "/out/model.safetensors"));
  EXPECT_TRUE(fs::exists(dir_ + "/out/tokenizer.json"));
  EXPECT_TRUE(fs::exists(dir_ + "/out/mergeserve_config.yaml"));
  std::ifstream cfg(dir_ + "/out/config.json");
  std::string text((std::istreambuf_iterator<char>(cfg)), {});
  EXPECT_THAT(text, HasSubstr("\"torch_dtype\": \"bfloat16\""));
  // A second run refuses to clobber the finished output.
  r = RunCli("merge " + dir_ + "/c.yaml " + dir_ + "/out --quiet");
  EXPECT_EQ(r.exit_code, 5) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--overwrite"));
  EXPECT_TRUE(fs::exists(dir_ + "/out/model.safetensors"));
}

// The peak RSS a merge reports is its own. Linux carries getrusage's
// ru_maxrss across execve from the address space the exec replaced, so a
// merge started by a large process (posix_spawn shares the parent's) used
// to report the parent's size.
TEST_F(MergeCliTest, PeakRssIsTheMergesOwnNotItsParents) {
  std::vector<char> big(size_t{384} << 20, 1);  // touched: resident
  testing::WriteFile(dir_ + "/c.yaml", kTies);
  const std::string out = dir_ + "/run.json";
  posix_spawn_file_actions_t files;
  posix_spawn_file_actions_init(&files);
  posix_spawn_file_actions_addopen(&files, 1, out.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<std::string> args = {MERGESERVE_BINARY, "merge",
                                   dir_ + "/c.yaml",  dir_ + "/out",
                                   "--quiet",         "--json"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, argv[0], &files, nullptr, argv.data(), environ),
            0);
  posix_spawn_file_actions_destroy(&files);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  const std::string j = testing::ReadFileBytes(out);
  const size_t at = j.find("\"peak_rss_bytes\":");
  ASSERT_NE(at, std::string::npos) << j;
  const int64_t peak = std::stoll(j.substr(at + 17));
  EXPECT_GT(peak, 0);
  EXPECT_LT(peak, int64_t{256} << 20) << "the parent holds " << big.size();
  EXPECT_EQ(big[12345], 1);
}

TEST_F(MergeCliTest, MissingTensorNamesTensorAndModel) {
  testing::WriteModel(dir_ + "/e1", {{"a", {{2, 2}, {1, 1, 1, 1}}}});
  Result r = Merge(std::string(kTies) + "  - model: e1\n");
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_THAT(r.output, HasSubstr("tensor 'b' is missing from model 'e1'"));
}

TEST_F(MergeCliTest, ShapeMismatchNamesBoth) {
  testing::WriteModel(dir_ + "/e1",
                      {{"a", {{4}, {1, 1, 1, 1}}}, {"b", {{3}, {1, 1, 1}}}});
  Result r = Merge(std::string(kTies) + "  - model: e1\n");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output,
              HasSubstr("shape mismatch for tensor 'a': model 'e1' has [4]"));
  EXPECT_THAT(r.output, HasSubstr("[2, 2]"));
}

TEST_F(MergeCliTest, CorruptFileIsReported) {
  fs::create_directories(dir_ + "/bad");
  testing::WriteFile(dir_ + "/bad/model.safetensors",
                     std::string("\x10\0\0\0\0\0\0\0{\"a\":", 14));
  Result r = Merge(std::string(kTies) + "  - model: bad\n");
  EXPECT_EQ(r.exit_code, 4);
  EXPECT_THAT(r.output, HasSubstr("model 'bad'"));
  EXPECT_THAT(r.output, HasSubstr("invalid safetensors file"));
}

TEST_F(MergeCliTest, UnreadableModelFolder) {
  Result r = Merge(std::string(kTies) + "  - model: nowhere\n");
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_THAT(r.output, HasSubstr("model 'nowhere'"));
}

TEST_F(MergeCliTest, DensityOutOfRange) {
  Result r = Merge(
      "merge_method: ties\nbase_model: base\nmodels:\n  - model: e0\n"
      "    parameters: {density: -0.1}\n");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output,
              HasSubstr("density must be in [0, 1], got -0.1 for model 'e0'"));
}

TEST_F(MergeCliTest, SlerpNeedsTwoModels) {
  Result r = Merge(
      "merge_method: slerp\nbase_model: base\nmodels: [base]\nparameters: {t: "
      "0.5}\n");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("exactly 2 models, got 1"));
}

// The fused methods never load LibTorch (loading it costs a process about
// 0.8 s); the ATen methods load its module on first use, and name it when it
// cannot be loaded.
constexpr char kNoModule[] =
    "MERGESERVE_ATEN_MODULE=/nonexistent/libmergeserve_aten.so";

TEST_F(MergeCliTest, FusedMethodsRunWithoutTheLibTorchModule) {
  Result r = Merge(kTies, "", kNoModule);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(fs::exists(dir_ + "/out/model.safetensors"));
  // model_stock streams on the fused backend too.
  testing::WriteModel(dir_ + "/e1",
                      {{"a", {{2, 2}, {0, 2, 4, 4}}}, {"b", {{3}, {2, 1, 0}}}});
  fs::remove_all(dir_ + "/out");
  r = Merge("merge_method: model_stock\nbase_model: base\nmodels: [e0, e1]\n",
            "", kNoModule);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(fs::exists(dir_ + "/out/model.safetensors"));
}

TEST_F(MergeCliTest, TheAtenBackendNeedsTheModuleBeforeItWrites) {
  Result r = Merge(kTies, "--backend aten", kNoModule);
  EXPECT_EQ(r.exit_code, 7);  // FAILED_PRECONDITION, nothing written
  EXPECT_THAT(r.output, HasSubstr("backend: aten runs on LibTorch"));
  r = Merge(kTies, "--backend aten");
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

TEST_F(MergeCliTest, AtenMethodsLoadTheModuleAndNameItWhenMissing) {
  constexpr char kSlerp[] =
      "merge_method: slerp\nbase_model: base\nmodels: [base, e0]\n"
      "parameters: {t: 0.5}\n";
  Result r = Merge(kSlerp, "", kNoModule);
  EXPECT_EQ(r.exit_code, 7);  // FAILED_PRECONDITION
  EXPECT_THAT(r.output, HasSubstr("merge_method 'slerp' runs on LibTorch"));
  EXPECT_THAT(r.output, HasSubstr("/nonexistent/libmergeserve_aten.so"));
  r = Merge(kSlerp);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(fs::exists(dir_ + "/out/model.safetensors"));
}

// Nor LAPACK: OpenBLAS's threads would spin at start-up in every merge
// (the matrix methods open it on first use; golden_test runs them).
TEST(MergeBinaryTest, DoesNotLinkLibTorchOrLapack) {
  const Result r = RunCommand(std::string("readelf -d ") + MERGESERVE_BINARY);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("(NEEDED)"));
  EXPECT_THAT(r.output, Not(HasSubstr("libtorch")));
  EXPECT_THAT(r.output, Not(HasSubstr("libc10")));
  EXPECT_THAT(r.output, Not(HasSubstr("liblapack")));
  EXPECT_THAT(r.output, Not(HasSubstr("blas")));
}

#if defined(__x86_64__) && !defined(MERGESERVE_NO_CPU_DISPATCH)
// The hot loops have AVX-512 and AVX2 clones picked at run time, and no
// instruction anywhere fuses a multiply and an add (-ffp-contract=off): the
// clones round exactly as the baseline does, so outputs are the same bits on
// every CPU.
TEST(MergeBinaryTest, HotLoopsHaveCpuClonesAndNoFusedMultiplyAdd) {
  const std::string bin = MERGESERVE_BINARY;
  Result r =
      RunCommand("nm -C " + bin + " | grep -c 'DeltaBf16.*clone .avx512f'");
  EXPECT_NE(r.output, "0\n");
  r = RunCommand("nm -C " + bin +
                 " | grep -c 'PhiloxUniformBlocks.*clone .avx2'");
  EXPECT_NE(r.output, "0\n");
  // objdump's own failure must not read as "no FMA": the AVX clones'
  // 64-bit multiplies (Philox) must be seen first.
  const std::string disassemble =
      "objdump -d --no-show-raw-insn " + bin + " 2>/dev/null";
  r = RunCommand(disassemble + " | grep -c vpmuludq");
  EXPECT_NE(r.output, "0\n");
  r = RunCommand(disassemble + " | grep -cE 'vfn?m(add|sub)'");
  EXPECT_EQ(r.output, "0\n");
}
#endif

TEST_F(MergeCliTest, UnknownKeyAndMethod) {
  Result r = Merge(std::string(kTies) + "parameters: {lamda: 1}\n");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("unknown parameter 'lamda'"));
  r = Merge("merge_method: soup\nmodels: [e0]\n");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("unknown merge_method 'soup'"));
}

TEST_F(MergeCliTest, NanInputIsRefused) {
  testing::WriteModel(
      dir_ + "/e1", {{"a", {{2, 2}, {1, NAN, 1, 1}}}, {"b", {{3}, {1, 1, 1}}}});
  Result r = Merge(std::string(kTies) + "  - model: e1\n");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output,
              HasSubstr("tensor 'a' of model 'e1' contains NaN or Inf"));
}

TEST_F(MergeCliTest, MemoryBudgetRefusesWholeTensorPaths) {
  Result r = Merge(std::string(kTies), "--backend aten --memory-budget 16");
  EXPECT_EQ(r.exit_code, 9);  // RESOURCE_EXHAUSTED, as in mergectl
  EXPECT_THAT(r.output, HasSubstr("memory budget"));
}

TEST_F(MergeCliTest, UsageErrorsAndHelp) {
  Result r = RunCli("merge --help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.output,
              HasSubstr("usage: mergeserve merge CONFIG.yaml OUTPUT_DIR"));
  r = RunCli("merge only-one-arg");
  EXPECT_EQ(r.exit_code, 2);
  r = RunCli("merge a b --threads zero");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("--threads"));
  r = RunCli("frobnicate");
  EXPECT_EQ(r.exit_code, 2);
  r = RunCli("methods");
  EXPECT_THAT(r.output, HasSubstr("breadcrumbs_ties"));
}

TEST_F(MergeCliTest, AnalyzePrintsTablesJsonAndAnSvgChart) {
  testing::WriteFile(dir_ + "/c.yaml", kTies);
  Result r = RunCli("analyze " + dir_ + "/c.yaml --svg " + dir_ + "/chart.svg");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("conflict%"));
  EXPECT_THAT(r.output, HasSubstr("pairwise cosine"));
  // "a" is a matrix: its subspace overlap, per tensor and per layer.
  EXPECT_THAT(r.output, HasSubstr("overlap"));
  EXPECT_THAT(r.output, HasSubstr("top singular subspaces"));
  std::ifstream svg(dir_ + "/chart.svg");
  std::string text((std::istreambuf_iterator<char>(svg)), {});
  EXPECT_THAT(text, HasSubstr("<svg"));
  EXPECT_THAT(text, HasSubstr("per layer"));
  EXPECT_THAT(text, HasSubstr("</svg>"));
  r = RunCli("analyze " + dir_ + "/c.yaml --json");
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("\"conflict_rate\""));
  EXPECT_THAT(r.output, HasSubstr("\"subspace_overlap\""));
  EXPECT_THAT(r.output, HasSubstr("\"layers\""));
  EXPECT_FALSE(fs::exists(dir_ + "/out"));
  testing::WriteFile(
      dir_ + "/s.yaml",
      "merge_method: slerp\nbase_model: base\nmodels: [base, e0]\n"
      "parameters: {t: 0.5}\n");
  r = RunCli("analyze " + dir_ + "/s.yaml");
  EXPECT_EQ(r.exit_code, 2);
}

TEST_F(MergeCliTest, ShardsTheOutput) {
  Result r = Merge(kTies, "--shard-size 20");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(fs::exists(dir_ + "/out/model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(dir_ + "/out/model-00001-of-00002.safetensors"));
}

// mergekit-yaml's command line: its flags translated (a 1K shard size is
// 1000 bytes) or accepted with a note, unknown ones refused.
TEST_F(MergeCliTest, MergekitYamlTakesMergekitsFlags) {
  testing::WriteModel(dir_ + "/big",
                      {{"a", {{200}, std::vector<float>(200, 1)}},
                       {"b", {{200}, std::vector<float>(200, 2)}}});
  testing::WriteFile(dir_ + "/k.yaml", "merge_method: linear\nmodels: [big]\n");
  Result r = RunCli("mergekit-yaml " + dir_ + "/k.yaml " + dir_ +
                    "/kout --out-shard-size 1K --lazy-unpickle --allow-crimes "
                    "--random-seed 3 --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("--lazy-unpickle has no effect here"));
  EXPECT_THAT(r.output, HasSubstr("--allow-crimes has no effect here"));
  EXPECT_THAT(r.output, HasSubstr("--random-seed has no effect here"));
  // 800 bytes per tensor, 1000 per shard: two shards and an index.
  EXPECT_TRUE(fs::exists(dir_ + "/kout/model.safetensors.index.json"));
  EXPECT_EQ(testing::ReadModel(dir_ + "/kout")["b"][0], 2.f);
  // Run again into the same folder, as mergekit would.
  EXPECT_EQ(
      RunCli("mergekit-yaml " + dir_ + "/k.yaml " + dir_ + "/kout --quiet")
          .exit_code,
      0);
  r = RunCli("mergekit-yaml " + dir_ + "/k.yaml " + dir_ + "/kout --bogus");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("unknown flag '--bogus'"));
  r = RunCli("mergekit-yaml " + dir_ + "/k.yaml " + dir_ +
             "/kout --out-shard-size lots");
  EXPECT_EQ(r.exit_code, 2);
}

}  // namespace
}  // namespace mergeserve
