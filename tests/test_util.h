// Helpers shared by the tests: write and read small models, run merges.
#ifndef MERGESERVE_TESTS_TEST_UTIL_H_
#define MERGESERVE_TESTS_TEST_UTIL_H_

#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mergeserve/base/cpu_dispatch.h"
#include "mergeserve/engine/executor.h"
#include "mergeserve/format/dtype.h"

namespace mergeserve::testing {

struct TestTensor {
  std::vector<int64_t> shape;
  std::vector<float> values;
  DType dtype = DType::kF32;
};
using TestModel = std::map<std::string, TestTensor>;

// A fresh empty folder under the test temp dir.
std::string TempDir(const std::string& name);

// The kernel sets a test runs: each hand-written set this CPU has (AVX-512
// where it has AVX-512F, AVX2 where it has AVX2) and the portable loops.
// Calls fn(set) once each, with that set as the widest, and restores the
// CPU's.
void ForEachKernelSet(const std::function<void(KernelSet)>& fn);
// Writes `model` as DIR/model.safetensors (values rounded to each dtype).
void WriteModel(const std::string& dir, const TestModel& model);
// Reads every tensor of a model folder as fp32.
std::map<std::string, std::vector<float>> ReadModel(const std::string& dir);
// Parses `yaml` (model paths relative to `dir`) and merges into dir/out.
absl::StatusOr<std::map<std::string, std::vector<float>>> Merge(
    const std::string& dir, const std::string& yaml, MergeOptions options = {});
// Merges `yaml` on the fused backend (2 threads), then on ATen.
absl::StatusOr<std::pair<std::map<std::string, std::vector<float>>,
                         std::map<std::string, std::vector<float>>>>
MergeOnBothBackends(const std::string& dir, const std::string& yaml);
// Random normal values.
std::vector<float> RandomValues(size_t n, std::mt19937& rng, float scale = 1.f);
// Writes DIR/base and DIR/e0 .. e<count-1>: `base` plus random normal
// deltas of `scale` (drawn expert by expert, tensor by tensor).
void WriteExperts(const std::string& dir, const TestModel& base, int count,
                  std::mt19937& rng, float scale);
// Reads DIR/e0 .. e<count-1> back (as WriteExperts rounded them).
std::vector<std::map<std::string, std::vector<float>>> ReadExperts(
    const std::string& dir, int count);
// The digits zoo (tests/tools/make_zoo.py), generated once per process
// under the test temp dir; its folder.
const std::string& DigitsZoo();
// The file's bytes ("" when unreadable).
std::string ReadFileBytes(const std::string& path);
// Writes the file bytes verbatim.
void WriteFile(const std::string& path, const std::string& bytes);
// Sends `request` to 127.0.0.1:`port` and reads until the server closes
// ("" when it cannot connect).
std::string HttpExchange(int port, const std::string& request);

}  // namespace mergeserve::testing

#endif  // MERGESERVE_TESTS_TEST_UTIL_H_
