#include "mergeserve/engine/merge_method.h"

#include <algorithm>
#include <cstring>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/cpu_dispatch.h"
#include "mergeserve/engine/merge_plan.h"

namespace mergeserve {

absl::Status NonFiniteError(const std::string& tensor,
                            const std::string& model_ref) {
  return absl::InvalidArgumentError(
      absl::StrCat("tensor '", tensor, "' of model '", model_ref,
                   "' contains NaN or Inf; refusing to merge it"));
}

bool AllFinite(const float* v, int64_t n) {
  // Exponent all ones means Inf or NaN; OR-reduce so the loop vectorises.
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, v + i, 4);
    bad |= static_cast<uint32_t>((b & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

absl::StatusOr<std::vector<float>> LoadWholeF32(const TensorView& v,
                                                const std::string& tensor,
                                                const std::string& model_ref) {
  std::vector<float> out(static_cast<size_t>(v.info->numel()));
  LoadF32(v, 0, static_cast<int64_t>(out.size()), out.data());
  if (!AllFinite(out.data(), static_cast<int64_t>(out.size()))) {
    return NonFiniteError(tensor, model_ref);
  }
  return out;
}

namespace {
// Bytes one pread of a staged window copies (pieces spread over the pool).
constexpr uint64_t kStagePiece = uint64_t{1} << 20;

// The first max_bytes of t's `candidates` that are read from a file, split
// evenly over them.
void PrefetchViews(const PlannedTensor& t,
                   const std::vector<const TensorView*>& candidates,
                   uint64_t max_bytes) {
  std::vector<const TensorView*> views;
  for (const TensorView* v : candidates) {
    if (v->file != nullptr && v->data != nullptr && v->info != nullptr) {
      views.push_back(v);
    }
  }
  if (views.empty()) return;
  const uint64_t each = max_bytes / views.size();
  for (const TensorView* v : views) {
    const uint64_t es = DTypeSize(v->info->dtype);
    OnFileRange(*v, 0,
                static_cast<int64_t>(std::min<uint64_t>(
                    static_cast<uint64_t>(t.numel), each / es)),
                &MappedFile::Prefetch);
  }
}
}  // namespace

uint8_t* StagingArena::Buffer(size_t slot, size_t bytes) {
  if (buffers_.size() <= slot) buffers_.resize(slot + 1);
  // Staged windows are filled by pread before they are read.
  if (buffers_[slot].size() < bytes) {
    buffers_[slot] = HugeBuffer::Uninitialized(bytes);
  }
  return buffers_[slot].as<uint8_t>();
}

void PrefetchInputs(const PlannedTensor& t, uint64_t max_bytes) {
  if (!t.merge) {
    PrefetchViews(t, {&t.reference}, max_bytes);
    return;
  }
  std::vector<const TensorView*> views = {&t.base};
  for (const TensorView& v : t.models) views.push_back(&v);
  PrefetchViews(t, views, max_bytes);
}

void PrefetchInputs(const PlannedTensor& t, uint64_t max_bytes, bool base,
                    const std::vector<int>& models) {
  std::vector<const TensorView*> views;
  if (base) views.push_back(&t.base);
  for (int m : models) views.push_back(&t.models[static_cast<size_t>(m)]);
  PrefetchViews(t, views, max_bytes);
}

absl::Status ForEachStagedChunk(
    ThreadPool& pool, StagingArena* arena, const PlannedTensor& t, bool base,
    const std::vector<int>& models, int64_t chunk,
    const std::function<void(int64_t, int, const PlannedTensor&)>& fn) {
  // The views this pass reads, and the copy of t whose views point at their
  // staged windows.
  PlannedTensor in = t;
  std::vector<TensorView*> staged;
  std::vector<const TensorView*> source;
  std::vector<const TensorView*> mapped;  // read in place (no arena)
  auto add = [&](const TensorView& v, TensorView& copy) {
    if (v.data == nullptr || v.file == nullptr) return;
    if (arena == nullptr) {
      mapped.push_back(&v);
      return;
    }
    staged.push_back(&copy);
    source.push_back(&v);
  };
  if (base) add(t.base, in.base);
  for (int m : models) {
    add(t.models[static_cast<size_t>(m)], in.models[static_cast<size_t>(m)]);
  }
  size_t row_bytes = 0;  // one element of every staged input
  for (const TensorView* v : source) row_bytes += DTypeSize(v->info->dtype);
  // A small tensor is staged whole and kept for the next pass over it;
  // others a window of at most kStagingBytes (whole chunks) at a time.
  const bool whole =
      !source.empty() &&
      static_cast<uint64_t>(t.numel) * row_bytes <= arena->hold_bytes;
  int64_t window = int64_t{4} << 20;
  if (row_bytes > 0) {
    window = std::min<int64_t>(
        window, static_cast<int64_t>(arena->window_bytes / row_bytes));
  }
  window = std::max(chunk, window / chunk * chunk);
  if (whole)
    window = std::max<int64_t>(1, (t.numel + chunk - 1) / chunk) * chunk;
  // Slot per staged view: where the held tensor has it already, reuse.
  std::vector<size_t> slot(source.size());
  bool reuse = whole && arena->held == &t;
  for (size_t i = 0; i < source.size() && reuse; ++i) {
    const auto& held = arena->held_views;
    auto it = std::find(held.begin(), held.end(), source[i]);
    reuse = it != held.end();
    if (reuse) slot[i] = static_cast<size_t>(it - held.begin());
    // A held copy is only as long as the window it was staged with; a
    // buffer that must grow holds nothing yet.
    reuse = reuse &&
            arena->Capacity(slot[i]) >=
                static_cast<size_t>(window) * DTypeSize(source[i]->info->dtype);
  }
  if (!reuse) {
    for (size_t i = 0; i < source.size(); ++i) slot[i] = i;
    if (arena != nullptr) {
      arena->held = whole ? &t : nullptr;
      arena->held_views = source;
    }
  }

  // Pieces of at most 1 MiB, so both cores copy.
  struct Piece {
    size_t input;
    uint64_t offset, bytes;
    uint8_t* dst;
  };
  absl::Status status;
  std::mutex mu;
  std::vector<Piece> pieces;
  for (int64_t begin = 0; begin < t.numel && status.ok(); begin += window) {
    const int64_t count = std::min(window, t.numel - begin);
    pieces.clear();
    for (size_t i = 0; i < source.size(); ++i) {
      const TensorView& v = *source[i];
      const size_t es = DTypeSize(v.info->dtype);
      const uint64_t bytes = static_cast<uint64_t>(count) * es;
      uint8_t* dst = arena->Buffer(slot[i], static_cast<size_t>(window) * es);
      const uint64_t offset = static_cast<uint64_t>(v.data - v.file->data()) +
                              static_cast<uint64_t>(begin) * es;
      for (uint64_t o = 0; o < bytes && !reuse; o += kStagePiece) {
        pieces.push_back(
            {i, offset + o, std::min(kStagePiece, bytes - o), dst + o});
      }
      staged[i]->data = dst;
      staged[i]->first = begin;
    }
    // The next window comes off the disk (where it is not cached) while
    // this one is copied and worked on.
    if (!reuse && begin + window < t.numel) {
      const int64_t next = std::min(window, t.numel - begin - window);
      for (const TensorView* v : source) {
        OnFileRange(*v, begin + window, next, &MappedFile::Prefetch);
      }
    }
    pool.Run(static_cast<int64_t>(pieces.size()), [&](int64_t k, int) {
      const Piece& p = pieces[static_cast<size_t>(k)];
      absl::Status st = source[p.input]->file->ReadAt(p.offset, p.bytes, p.dst);
      if (!st.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (status.ok()) status = std::move(st);
      }
    });
    if (!status.ok()) {
      if (arena != nullptr) arena->held = nullptr;
      break;
    }
    for (const TensorView* v : mapped) PopulateRange(*v, begin, count);
    const int64_t first = begin / chunk;
    const int64_t n = (count + chunk - 1) / chunk;
    pool.Run(n, [&](int64_t i, int w) { fn(first + i, w, in); });
    for (const TensorView* v : mapped) ReleaseRange(*v, begin, count);
  }
  return status;
}

namespace {

inline uint32_t NonFinite(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return static_cast<uint32_t>((b & 0x7f800000u) == 0x7f800000u);
}

inline float Bf16At(const uint8_t* src, int64_t j) {
  uint16_t h;
  std::memcpy(&h, src + 2 * j, 2);
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float x;
  std::memcpy(&x, &bits, 4);
  return x;
}

inline float F32At(const uint8_t* src, int64_t j) {
  float x;
  std::memcpy(&x, src + 4 * j, 4);
  return x;
}

// One loop per dtype and base/no base, so the compiler vectorises the
// convert, check and subtract together (for each CPU: MS_CPU_DISPATCH).
MS_CPU_DISPATCH bool DeltaBf16(const uint8_t* __restrict src, int64_t n,
                               const float* __restrict base,
                               float* __restrict dst) {
  uint32_t bad = 0;
  for (int64_t j = 0; j < n; ++j) {
    const float x = Bf16At(src, j);
    bad |= NonFinite(x);
    dst[j] = x - base[j];
  }
  return bad == 0;
}

MS_CPU_DISPATCH bool LoadBf16(const uint8_t* __restrict src, int64_t n,
                              float* __restrict dst) {
  uint32_t bad = 0;
  for (int64_t j = 0; j < n; ++j) {
    const float x = Bf16At(src, j);
    bad |= NonFinite(x);
    dst[j] = x;
  }
  return bad == 0;
}

// F32 (and F16/F64 after their conversion into dst, so src may be dst).
MS_CPU_DISPATCH bool DeltaF32(const uint8_t* src, int64_t n,
                              const float* __restrict base, float* dst) {
  uint32_t bad = 0;
  if (base != nullptr) {
    for (int64_t j = 0; j < n; ++j) {
      const float x = F32At(src, j);
      bad |= NonFinite(x);
      dst[j] = x - base[j];
    }
  } else {
    for (int64_t j = 0; j < n; ++j) {
      const float x = F32At(src, j);
      bad |= NonFinite(x);
      dst[j] = x;
    }
  }
  return bad == 0;
}

}  // namespace

bool LoadDelta(const TensorView& v, int64_t begin, int64_t count,
               const float* base, float* dst) {
  const size_t es = DTypeSize(v.info->dtype);
  const uint8_t* src = v.data + static_cast<size_t>(begin - v.first) * es;
  switch (v.info->dtype) {
    case DType::kBF16:
      return base != nullptr ? DeltaBf16(src, count, base, dst)
                             : LoadBf16(src, count, dst);
    case DType::kF32:
      return DeltaF32(src, count, base, dst);
    default:
      // F16/F64: convert first, then check and subtract.
      LoadAsF32(v.info->dtype, src, count, dst);
      return DeltaF32(reinterpret_cast<const uint8_t*>(dst), count, base, dst);
  }
}

}  // namespace mergeserve
