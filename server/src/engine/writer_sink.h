// The TensorSink a merge writes its output tensor through: converts the fp32
// values to the tensor's dtype and hands them to the ShardedWriter.
#ifndef MERGESERVE_ENGINE_WRITER_SINK_H_
#define MERGESERVE_ENGINE_WRITER_SINK_H_

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "mergeserve/engine/merge_method.h"
#include "mergeserve/format/safetensors_writer.h"

namespace mergeserve {

// Workers write 16K-element chunks in any order. Each chunk as its own
// pwrite made ~10K calls for a 170M model, and two threads writing one file
// spin on the inode's lock; so chunks are gathered into regions of
// kRegionElems, and the worker that completes a region writes it whole.
class WriterSink : public TensorSink {
 public:
  static constexpr int64_t kRegionElems = int64_t{1} << 20;

  WriterSink(ShardedWriter& writer, size_t index, const PlannedTensor& tensor,
             bool reject_non_finite);

  // Thread-safe for disjoint ranges; every element is written once (a
  // region written again, or a piece past a full region, is INTERNAL;
  // within a region only the count of elements is checked).
  absl::Status WriteF32(int64_t begin, const float* values,
                        int64_t count) override;
  // After the method returned OK: INTERNAL if a region was not written
  // whole (a method left elements unwritten).
  absl::Status Finish();

  // Most bytes the sink buffers with `workers` threads writing elements of
  // `dtype` (chunks that straddle regions keep two open per worker, and one
  // is being written).
  static int64_t MemoryBound(int workers, DType dtype);

 private:
  // Converts values into out (dtype), rejecting non-finite values.
  absl::Status Convert(int64_t begin, const float* values, int64_t count,
                       unsigned char* out) const;
  absl::Status WritePiece(int64_t begin, const float* values, int64_t count);

  struct Region {
    std::unique_ptr<unsigned char[]> data;
    int64_t filled = 0;
  };

  ShardedWriter& writer_;
  const size_t index_;
  const PlannedTensor& tensor_;
  const bool reject_non_finite_;
  const size_t elem_bytes_;
  absl::Mutex mu_;
  std::map<int64_t, Region> open_ ABSL_GUARDED_BY(mu_);  // by region index
  std::vector<bool> done_ ABSL_GUARDED_BY(mu_);          // regions written
  std::vector<std::unique_ptr<unsigned char[]>> free_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_WRITER_SINK_H_
