#include "engine/writer_sink.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/format/dtype.h"

namespace mergeserve {

WriterSink::WriterSink(ShardedWriter& writer, size_t index,
                       const PlannedTensor& tensor, bool reject_non_finite)
    : writer_(writer),
      index_(index),
      tensor_(tensor),
      reject_non_finite_(reject_non_finite),
      elem_bytes_(DTypeSize(tensor.out_dtype)),
      done_(
          static_cast<size_t>((tensor.numel + kRegionElems - 1) / kRegionElems),
          false) {}

int64_t WriterSink::MemoryBound(int workers, DType dtype) {
  return (2 * std::max(workers, 1) + 1) * kRegionElems *
         static_cast<int64_t>(DTypeSize(dtype));
}

absl::Status WriterSink::Convert(int64_t begin, const float* values,
                                 int64_t count, unsigned char* out) const {
  const DType dtype = tensor_.out_dtype;
  StoreFromF32(values, count, dtype, out);
  if (reject_non_finite_) {
    // Checked after rounding, so a value that overflows float16 counts.
    const int64_t bad = FindNonFinite(out, count, dtype);
    if (bad >= 0) {
      return absl::OutOfRangeError(absl::StrCat(
          "merged tensor '", tensor_.name, "' holds a non-finite value (",
          values[bad], " at element ", begin + bad, " in ",
          std::string(DTypeName(dtype)),
          "); check the weights, lambda and the inputs for overflow or NaN"));
    }
  }
  return absl::OkStatus();
}

absl::Status WriterSink::WriteF32(int64_t begin, const float* values,
                                  int64_t count) {
  const int64_t end = begin + count;
  for (int64_t b = begin; b < end;) {
    const int64_t region_end = (b / kRegionElems + 1) * kRegionElems;
    const int64_t n = std::min(end, region_end) - b;
    MS_RETURN_IF_ERROR(WritePiece(b, values + (b - begin), n));
    b += n;
  }
  return absl::OkStatus();
}

absl::Status WriterSink::WritePiece(int64_t begin, const float* values,
                                    int64_t count) {
  const int64_t r = begin / kRegionElems;
  const int64_t first = r * kRegionElems;
  const int64_t size = std::min(kRegionElems, tensor_.numel - first);
  const auto twice = [&] {
    return absl::InternalError(absl::StrCat("merged tensor '", tensor_.name,
                                            "': elements of ", first, "..",
                                            first + size, " written twice"));
  };
  if (count == size) {  // a whole region: no gathering
    {
      absl::MutexLock lock(&mu_);
      if (done_[static_cast<size_t>(r)] || open_.count(r) > 0) return twice();
      done_[static_cast<size_t>(r)] = true;
    }
    thread_local std::vector<unsigned char> buf;
    buf.resize(static_cast<size_t>(count) * elem_bytes_);
    MS_RETURN_IF_ERROR(Convert(begin, values, count, buf.data()));
    return writer_.Write(index_, static_cast<uint64_t>(begin) * elem_bytes_,
                         buf.data(), buf.size());
  }
  unsigned char* data;
  {
    absl::MutexLock lock(&mu_);
    if (done_[static_cast<size_t>(r)]) return twice();
    Region& region = open_[r];
    if (region.data == nullptr) {
      if (!free_.empty()) {
        region.data = std::move(free_.back());
        free_.pop_back();
      } else {
        region.data.reset(
            new unsigned char[static_cast<size_t>(kRegionElems) * elem_bytes_]);
      }
    }
    data = region.data.get();
  }
  MS_RETURN_IF_ERROR(
      Convert(begin, values, count,
              data + static_cast<size_t>(begin - first) * elem_bytes_));
  std::unique_ptr<unsigned char[]> complete;
  {
    absl::MutexLock lock(&mu_);
    auto it = open_.find(r);
    it->second.filled += count;
    if (it->second.filled > size) return twice();
    if (it->second.filled == size) {
      complete = std::move(it->second.data);
      open_.erase(it);
      done_[static_cast<size_t>(r)] = true;
    }
  }
  if (complete == nullptr) return absl::OkStatus();
  const absl::Status written =
      writer_.Write(index_, static_cast<uint64_t>(first) * elem_bytes_,
                    complete.get(), static_cast<uint64_t>(size) * elem_bytes_);
  absl::MutexLock lock(&mu_);
  free_.push_back(std::move(complete));
  return written;
}

absl::Status WriterSink::Finish() {
  absl::MutexLock lock(&mu_);
  const auto missing = std::find(done_.begin(), done_.end(), false);
  if (missing == done_.end()) return absl::OkStatus();
  const int64_t first = (missing - done_.begin()) * kRegionElems;
  return absl::InternalError(absl::StrCat(
      "merged tensor '", tensor_.name, "': the method left elements of ", first,
      "..", std::min(first + kRegionElems, tensor_.numel), " unwritten"));
}

}  // namespace mergeserve
