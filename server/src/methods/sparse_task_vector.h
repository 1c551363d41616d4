// A trimmed task vector kept between merges in the server's cache: per
// chunk, a bit per element that is not zero and those values in order. A
// sweep over weights (or anything but the trims) rebuilds each expert's
// trimmed τ from it instead of reading the expert again: 0.2·4 bytes plus
// one bit per parameter at density 0.2, against the expert's 2 (bf16) and a
// subtraction. Zeros are not kept: a zero entry adds nothing to any sum, and
// never agrees with an elected sign, whatever its sign bit.
#ifndef MERGESERVE_METHODS_SPARSE_TASK_VECTOR_H_
#define MERGESERVE_METHODS_SPARSE_TASK_VECTOR_H_

#include <cstdint>
#include <vector>

namespace mergeserve {

class SparseTaskVector {
 public:
  // A tensor of `numel` elements in chunks of `chunk`.
  SparseTaskVector(int64_t numel, int64_t chunk);

  // Keeps chunk ci (cnt values). Chunks may be packed from several threads
  // at once, each chunk once.
  void Pack(int64_t ci, const float* tv, int64_t cnt);
  // Writes chunk ci back (cnt values, zeros where none was kept).
  void Unpack(int64_t ci, int64_t cnt, float* tv) const;
  // Memory held, for the cache's budget (after every chunk is packed).
  int64_t bytes() const;

 private:
  int64_t words_;                           // bit words per chunk
  std::vector<uint64_t> bits_;              // words_ per chunk
  std::vector<std::vector<float>> values_;  // the kept values per chunk
};

}  // namespace mergeserve

#endif  // MERGESERVE_METHODS_SPARSE_TASK_VECTOR_H_
