// Memory read bandwidth of this machine: every thread sums its slice of a
// buffer much larger than the caches; best of several rounds. The benchmark
// script reports merge throughput as a fraction of this.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
  const size_t bytes = (argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1024)
                       << 20;
  const int threads =
      argc > 2 ? std::atoi(argv[2])
               : static_cast<int>(std::thread::hardware_concurrency());
  const size_t words = bytes / 8;
  std::vector<uint64_t> buf(words);
  for (size_t i = 0; i < words; ++i) buf[i] = i;
  double best = 0;
  volatile uint64_t sink = 0;
  for (int round = 0; round < 5; ++round) {
    std::vector<uint64_t> sums(static_cast<size_t>(threads));
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        const size_t b = words * static_cast<size_t>(t) / threads;
        const size_t e = words * static_cast<size_t>(t + 1) / threads;
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        size_t i = b;
        for (; i + 4 <= e; i += 4) {
          s0 += buf[i];
          s1 += buf[i + 1];
          s2 += buf[i + 2];
          s3 += buf[i + 3];
        }
        for (; i < e; ++i) s0 += buf[i];
        sums[static_cast<size_t>(t)] = s0 + s1 + s2 + s3;
      });
    }
    for (auto& th : pool) th.join();
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    for (uint64_t x : sums) sink = sink + x;
    best = std::max(best, static_cast<double>(bytes) / s);
  }
  std::printf("{\"read_bytes_per_second\": %.0f, \"threads\": %d}\n", best,
              threads);
  return 0;
}
