// libFuzzer target: the safetensors reader on arbitrary bytes. It must
// return OK or an error naming the file, never crash, read out of bounds
// or hang, and every tensor it accepts must lie inside the file.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "mergeserve/format/safetensors_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The reader maps a path: give it an in-memory file.
  static const int fd = memfd_create("fuzz.safetensors", 0);
  if (fd < 0) std::abort();
  if (ftruncate(fd, 0) != 0 ||
      pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) {
    std::abort();
  }
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  auto reader = mergeserve::SafetensorsReader::Open(path);
  if (!reader.ok()) return 0;
  const uint64_t file_size = (*reader)->file().size();
  uint64_t sum = 0;
  for (const mergeserve::TensorInfo& t : (*reader)->tensors()) {
    if (t.offset + t.nbytes > file_size) std::abort();
    // Touch the first and last byte the reader promised.
    mergeserve::TensorView v = (*reader)->View(t);
    if (t.nbytes > 0) sum += v.data[0] + v.data[t.nbytes - 1];
    if ((*reader)->Find(t.name) != &t) std::abort();
  }
  return static_cast<int>(sum & 0);
}
