#include "test_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"
#include "mergeserve/base/cpu_dispatch.h"
#include "mergeserve/format/model_folder.h"
#include "mergeserve/format/safetensors_writer.h"

namespace mergeserve::testing {
namespace fs = std::filesystem;

void ForEachKernelSet(const std::function<void(KernelSet)>& fn) {
  // The CPU's kernels again afterwards, even if fn throws.
  struct Restore {
    ~Restore() { LimitKernelsForTest(KernelSet::kAvx512); }
  } restore;
  for (KernelSet set : SupportedKernelSets()) {
    LimitKernelsForTest(set);
    SCOPED_TRACE(KernelSetName(set));
    fn(set);
  }
}

std::string TempDir(const std::string& name) {
  const char* base = std::getenv("TEST_TMPDIR");
  fs::path root =
      base ? fs::path(base) : fs::temp_directory_path() / "mergeserve_tests";
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  fs::path dir =
      root /
      (info ? std::string(info->test_suite_name()) + "." + info->name()
            : std::string("global")) /
      name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

void WriteModel(const std::string& dir, const TestModel& model) {
  std::vector<TensorSpec> specs;
  for (const auto& [name, t] : model) specs.push_back({name, t.dtype, t.shape});
  ShardedWriter::Options o;
  o.output_dir = dir;
  o.overwrite = true;
  auto w = ShardedWriter::Create(o, specs);
  ASSERT_TRUE(w.ok()) << w.status();
  size_t i = 0;
  for (const auto& [name, t] : model) {
    std::vector<unsigned char> buf(t.values.size() * DTypeSize(t.dtype));
    if (IsMergeable(t.dtype)) {
      StoreFromF32(t.values.data(), static_cast<int64_t>(t.values.size()),
                   t.dtype, buf.data());
    } else {
      for (size_t j = 0; j < t.values.size(); ++j) {
        const int64_t v = static_cast<int64_t>(t.values[j]);
        std::memcpy(buf.data() + j * DTypeSize(t.dtype), &v,
                    DTypeSize(t.dtype));
      }
    }
    ASSERT_TRUE((*w)->Write(i++, 0, buf.data(), buf.size()).ok());
  }
  ASSERT_TRUE((*w)->Commit().ok());
}

std::map<std::string, std::vector<float>> ReadModel(const std::string& dir) {
  std::map<std::string, std::vector<float>> out;
  auto m = ModelFolder::Open(dir);
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return out;
  for (const TensorInfo* t : (*m)->tensors()) {
    std::vector<float> v(static_cast<size_t>(t->numel()));
    TensorView view = (*m)->View(*t);
    if (IsMergeable(t->dtype)) {
      LoadAsF32(t->dtype, view.data, t->numel(), v.data());
    } else {
      for (size_t j = 0; j < v.size(); ++j) {
        int64_t x = 0;
        std::memcpy(&x, view.data + j * DTypeSize(t->dtype),
                    DTypeSize(t->dtype));
        v[j] = static_cast<float>(x);
      }
    }
    out[t->name] = std::move(v);
  }
  return out;
}

std::vector<float> RandomValues(size_t n, std::mt19937& rng, float scale) {
  std::normal_distribution<float> dist(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

std::vector<std::map<std::string, std::vector<float>>> ReadExperts(
    const std::string& dir, int count) {
  std::vector<std::map<std::string, std::vector<float>>> out;
  for (int e = 0; e < count; ++e) {
    out.push_back(ReadModel(dir + "/e" + std::to_string(e)));
  }
  return out;
}

void WriteExperts(const std::string& dir, const TestModel& base, int count,
                  std::mt19937& rng, float scale) {
  WriteModel(dir + "/base", base);
  for (int e = 0; e < count; ++e) {
    TestModel m = base;
    for (auto& [name, t] : m) {
      const auto d = RandomValues(t.values.size(), rng, scale);
      for (size_t j = 0; j < d.size(); ++j) t.values[j] += d[j];
    }
    WriteModel(dir + "/e" + std::to_string(e), m);
  }
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

std::string HttpExchange(int port, const std::string& request) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return "";
  }
  (void)!write(fd, request.data(), request.size());
  shutdown(fd, SHUT_WR);  // all sent: a short request ends here
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) {
    out.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return out;
}

}  // namespace mergeserve::testing
