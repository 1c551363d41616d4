#include "mergeserve/engine/magnitude_selector.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "engine/first_error.h"
#include "mergeserve/base/cpu_dispatch.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/engine/merge_method.h"

namespace mergeserve {
namespace {

constexpr size_t kBins = 1 << 16;
// Pass 1 bins: top 16 bits, then whether any of the low 16 is set.
constexpr size_t kBins1 = kBins << 1;
// Up to this many bucket members per query are kept as lists in the second
// pass, so ties can be counted per chunk without another pass over the data.
constexpr uint64_t kMaxListed = uint64_t{8} << 20;

MS_CPU_DISPATCH void AbsBits(float* __restrict value, uint32_t* __restrict bits,
                             int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    value[j] = std::fabs(value[j]);
    std::memcpy(bits + j, value + j, 4);
  }
}

// The bin of one fp32 bit pattern (the sign is dropped).
inline uint32_t BinOf(uint32_t x) {
  x &= 0x7fffffffu;
  // (low + 0xffff) >> 16 is 1 exactly when a low bit is set.
  return ((x >> 15) & ~1u) | (((x & 0xffffu) + 0xffffu) >> 16);
}

// Pass 1's bin of each |value|: (top 16 bits) * 2 + (low 16 bits != 0),
// and the smallest and largest bin seen.
MS_CPU_DISPATCH void AbsBins(const float* __restrict value,
                             uint32_t* __restrict bins, int64_t n,
                             uint32_t* min_bin, uint32_t* max_bin) {
  uint32_t lo = *min_bin, hi = *max_bin;
  for (int64_t j = 0; j < n; ++j) {
    uint32_t x;
    std::memcpy(&x, value + j, 4);
    const uint32_t b = BinOf(x);
    bins[j] = b;
    lo = std::min(lo, b);
    hi = std::max(hi, b);
  }
  *min_bin = lo;
  *max_bin = hi;
}

// Counts over kBins1 bins, `copies` arrays side by side, of which only
// [lo, hi) has been zeroed: bf16 task vectors touch a few thousand bins, and
// zeroing (and summing) all 2^17 per tensor would cost more than counting.
template <typename T>
class BinRange {
 public:
  explicit BinRange(int copies = 1)
      : data_(new T[kBins1 * static_cast<size_t>(copies)]), copies_(copies) {}
  // Makes [lo, hi) part of the zeroed range.
  void Cover(size_t lo, size_t hi) {
    if (lo_ >= hi_) {
      Zero(lo, hi);
      lo_ = lo;
      hi_ = hi;
      return;
    }
    if (lo < lo_) Zero(lo, lo_), lo_ = lo;
    if (hi > hi_) Zero(hi_, hi), hi_ = hi;
  }
  T* copy(int c) { return data_.get() + kBins1 * static_cast<size_t>(c); }
  T at(size_t i) const { return i >= lo_ && i < hi_ ? data_[i] : T{0}; }
  size_t lo() const { return lo_; }
  size_t hi() const { return hi_; }

 private:
  void Zero(size_t lo, size_t hi) {
    for (int c = 0; c < copies_; ++c) std::fill(copy(c) + lo, copy(c) + hi, 0);
  }
  std::unique_ptr<T[]> data_;
  int copies_;
  size_t lo_ = 0, hi_ = 0;
};

inline uint32_t Bf16Delta(const uint8_t* src, const float* base, int64_t j,
                          uint32_t* bad) {
  uint16_t h;
  std::memcpy(&h, src + 2 * j, 2);
  const uint32_t xb = static_cast<uint32_t>(h) << 16;
  *bad |= static_cast<uint32_t>((xb & 0x7f800000u) == 0x7f800000u);
  float x;
  std::memcpy(&x, &xb, 4);
  const float d = x - base[j];  // the same τ as LoadDelta's
  uint32_t u;
  std::memcpy(&u, &d, 4);
  return u;
}

// bf16 inputs with a base, the common case: the delta, its finiteness check
// and its bin in one loop, without LoadDelta's fp32 copy of τ. False on a
// non-finite input.
MS_CPU_DISPATCH bool DeltaBinsBf16(const uint8_t* __restrict src,
                                   const float* __restrict base, int64_t n,
                                   uint32_t* __restrict bins, uint32_t* min_bin,
                                   uint32_t* max_bin) {
  uint32_t bad = 0, lo = *min_bin, hi = *max_bin;
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t b = BinOf(Bf16Delta(src, base, j, &bad));
    bins[j] = b;
    lo = std::min(lo, b);
    hi = std::max(hi, b);
  }
  *min_bin = lo;
  *max_bin = hi;
  return bad == 0;
}

// Entries with |x − base| bits == want (inputs checked by pass 1).
MS_CPU_DISPATCH int64_t CountEqualBf16(const uint8_t* __restrict src,
                                       const float* __restrict base, int64_t n,
                                       uint32_t want) {
  uint32_t bad = 0;
  uint32_t count = 0;  // one chunk: < 2^32, and 32-bit sums need no widening
  for (int64_t j = 0; j < n; ++j) {
    count += (Bf16Delta(src, base, j, &bad) & 0x7fffffffu) == want;
  }
  return count;
}

// The bf16 data of chunk [begin, ...) of v, or null when v is not bf16.
const uint8_t* Bf16Data(const TensorView& v, int64_t begin) {
  if (v.info->dtype != DType::kBF16) return nullptr;
  return v.data + static_cast<size_t>(begin - v.first) * 2;
}

MS_CPU_DISPATCH int64_t CountEqual(const uint32_t* __restrict bits, int64_t n,
                                   uint32_t want) {
  uint32_t count = 0;  // one chunk: < 2^32
  for (int64_t j = 0; j < n; ++j) count += bits[j] == want;
  return count;
}

// One tensor's nonzero counts of the zero-low bins 2b, by b ascending.
// Sparse: a tensor's |τ| touch a few thousand top-16-bit values, but from
// 0 (exact zeros) up, a range of some 30,000.
struct TensorBins {
  std::vector<uint32_t> bin;
  std::vector<uint32_t> count;
  int64_t at(uint32_t b) const {
    const auto it = std::lower_bound(bin.begin(), bin.end(), b);
    return it != bin.end() && *it == b
               ? count[static_cast<size_t>(it - bin.begin())]
               : 0;
  }
};
// At most this many per-tensor counts (8 bytes each) in all.
constexpr size_t kMaxTensorBins = size_t{4} << 20;

// Turns each tie-breaking query's counts of ties per chunk into ties kept:
// the first k - count_greater in flat order.
std::vector<SelectionResult> KeepFirstTies(
    const std::vector<SelectionQuery>& queries,
    const std::vector<DomainChunk>& chunks, const std::vector<int>& tie_tensor,
    const std::vector<int64_t>& tie_before,
    std::vector<SelectionResult> results) {
  for (size_t q = 0; q < queries.size(); ++q) {
    if (!queries[q].ties_per_chunk) continue;
    SelectionResult& r = results[q];
    int64_t left = queries[q].k - r.count_greater - tie_before[q];
    if (queries[q].ties_in_pass && tie_tensor[q] >= 0) {
      // Those before keep all (kAllTies), those after none; the caller
      // counts the one in between.
      r.tensor_keep = left;
      for (size_t ci = 0; ci < chunks.size(); ++ci) {
        if (chunks[ci].tensor == tie_tensor[q]) r.chunk_keep[ci] = kCountInPass;
      }
      continue;
    }
    for (size_t ci = 0; ci < chunks.size(); ++ci) {
      int64_t& keep = r.chunk_keep[ci];
      if (keep == kAllTies) {  // a whole tensor before the one counted
        continue;
      }
      if (tie_tensor[q] >= 0 && chunks[ci].tensor != tie_tensor[q]) {
        keep = 0;  // after it
        continue;
      }
      keep = std::min(keep, left);
      left -= keep;
    }
  }
  return results;
}

}  // namespace

int64_t MagnitudeSelector::MemoryBound(int64_t models, int workers,
                                       int64_t chunks) {
  const int64_t w = std::max(workers, 1);
  const int64_t bins = static_cast<int64_t>(kBins);
  // Pass 1: two uint32 histograms per (worker, model), uint64 totals.
  const int64_t bins1 = static_cast<int64_t>(kBins1);
  const int64_t pass1 = w * 2 * bins1 * 4 + bins1 * 8;
  // Pass 2, for up to two wanted buckets per model (keep and drop): uint64
  // totals, a uint32 histogram per worker or a member list of at most
  // kMaxListed uint16 values spread over per-chunk vectors.
  const int64_t per_slot =
      bins * 8 + std::max<int64_t>(w * bins * 4, kMaxListed * 2) + chunks * 32;
  // Results: a tie count per chunk per query; and, over several tensors,
  // each tensor's zero-low counts (all models together).
  return models * (pass1 + 2 * per_slot + 2 * chunks * 8) +
         static_cast<int64_t>(kMaxTensorBins) * 8;
}

std::vector<DomainChunk> ChunkDomain(
    const std::vector<const PlannedTensor*>& domain, int64_t chunk_elems) {
  std::vector<DomainChunk> chunks;
  for (size_t t = 0; t < domain.size(); ++t) {
    for (int64_t b = 0; b < domain[t]->numel; b += chunk_elems) {
      chunks.push_back({static_cast<int>(t), b,
                        std::min(chunk_elems, domain[t]->numel - b)});
    }
  }
  return chunks;
}

absl::Status MagnitudeSelector::LoadBase(const PlannedTensor& t, int64_t begin,
                                         int64_t count, float* base) const {
  if (t.base.data == nullptr) return absl::OkStatus();
  if (!LoadDelta(t.base, begin, count, nullptr, base)) {
    return NonFiniteError(t.name, *plan_.config().base_model);
  }
  return absl::OkStatus();
}

absl::Status MagnitudeSelector::MagnitudeBits(const PlannedTensor& t, int model,
                                              int64_t begin, int64_t count,
                                              const float* base, float* value,
                                              uint32_t* bits) const {
  const TensorView& mv = t.models[static_cast<size_t>(model)];
  if (!LoadDelta(mv, begin, count, t.base.data != nullptr ? base : nullptr,
                 value)) {
    return NonFiniteError(t.name,
                          plan_.models()[static_cast<size_t>(model)].ref);
  }
  AbsBits(value, bits, count);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<SelectionResult>> MagnitudeSelector::Select(
    const std::vector<const PlannedTensor*>& domain,
    const std::vector<SelectionQuery>& queries) const {
  std::vector<SelectionResult> results(queries.size());
  if (queries.empty()) return results;
  // Distinct models queried, each with its own histograms.
  std::vector<int> models;
  std::map<int, size_t> slot;
  for (const auto& q : queries) {
    if (slot.emplace(q.model, models.size()).second) models.push_back(q.model);
  }
  const size_t nm = models.size();
  const std::vector<DomainChunk> chunks = ChunkDomain(domain, chunk_elems_);
  const int workers = pool_.num_threads();
  std::vector<Scratch> scratch(static_cast<size_t>(workers));

  // Pass 1: histogram of the top 16 bits, each bucket split by whether the
  // low 16 bits are zero (bin 2b) or not (bin 2b + 1).
  // Two histograms per (worker, model), filled alternately: consecutive
  // entries often hit the same bin, and one array would serialise on it.
  std::vector<BinRange<uint32_t>> hist;
  hist.reserve(static_cast<size_t>(workers) * nm);
  for (size_t i = 0; i < static_cast<size_t>(workers) * nm; ++i)
    hist.emplace_back(2);
  std::vector<BinRange<uint64_t>> hi(nm);
  // Over several tensors, ties broken by index need to know which tensor the
  // kept ties run out in: each tensor's counts of the zero-low bins are kept
  // (up to kMaxTensorBins), so only that tensor is read again (or, with
  // ties_in_pass, none).
  bool per_tensor =
      domain.size() > 1 &&
      std::any_of(queries.begin(), queries.end(),
                  [](const SelectionQuery& q) { return q.ties_per_chunk; });
  std::vector<std::vector<TensorBins>> tensor_bins(nm);
  size_t tensor_bins_size = 0;
  std::vector<uint32_t> dense;
  // Per-worker uint32 counts are flushed into uint64 totals after each tensor
  // (a tensor has < 2^32 entries).
  MS_RETURN_IF_ERROR(ForEachChunk(
      domain, chunks, models,
      [&](size_t, const DomainChunk& c, int w, const PlannedTensor& t,
          const float* base) -> absl::Status {
        Scratch& s = scratch[static_cast<size_t>(w)];
        for (size_t m = 0; m < nm; ++m) {
          const TensorView& mv = t.models[static_cast<size_t>(models[m])];
          const uint8_t* bf16 = Bf16Data(mv, c.begin);
          const bool has_base = t.base.data != nullptr;
          uint32_t min_bin = kBins1 - 1, max_bin = 0;
          const bool finite =
              bf16 != nullptr && has_base
                  ? DeltaBinsBf16(bf16, base, c.count, s.bits.data(), &min_bin,
                                  &max_bin)
                  : LoadDelta(mv, c.begin, c.count, has_base ? base : nullptr,
                              s.value.data());
          if (!finite) {
            return NonFiniteError(
                t.name, plan_.models()[static_cast<size_t>(models[m])].ref);
          }
          if (bf16 == nullptr || !has_base) {
            AbsBins(s.value.data(), s.bits.data(), c.count, &min_bin, &max_bin);
          }
          BinRange<uint32_t>& range = hist[static_cast<size_t>(w) * nm + m];
          range.Cover(min_bin, max_bin + size_t{1});
          uint32_t* h0 = range.copy(0);
          uint32_t* h1 = range.copy(1);
          const uint32_t* bins = s.bits.data();
          const int64_t n = c.count;
          int64_t j = 0;
          for (; j + 1 < n; j += 2) {
            ++h0[bins[j]];
            ++h1[bins[j + 1]];
          }
          if (j < n) ++h0[bins[j]];
        }
        return absl::OkStatus();
      },
      scratch,
      [&] {
        for (size_t m = 0; m < nm; ++m) {
          // This tensor's zero-low counts, summed over the workers in
          // `dense` (b - first), then kept sparse.
          size_t first = 0;
          if (per_tensor) {
            size_t lo = kBins1, hi_bin = 0;
            for (int w = 0; w < workers; ++w) {
              const auto& h = hist[static_cast<size_t>(w) * nm + m];
              if (h.lo() >= h.hi()) continue;
              lo = std::min(lo, h.lo());
              hi_bin = std::max(hi_bin, h.hi());
            }
            first = lo >> 1;
            dense.assign(lo < hi_bin ? ((hi_bin + 1) >> 1) - first : 0, 0);
          }
          for (int w = 0; w < workers; ++w) {
            BinRange<uint32_t>& h = hist[static_cast<size_t>(w) * nm + m];
            if (h.lo() >= h.hi()) continue;
            BinRange<uint64_t>& out = hi[m];
            out.Cover(h.lo(), h.hi());
            uint32_t* h0 = h.copy(0);
            uint32_t* h1 = h.copy(1);
            uint64_t* o = out.copy(0);
            for (size_t b = h.lo(); b < h.hi(); ++b) {
              o[b] += uint64_t{h0[b]} + h1[b];
              if (per_tensor && (b & 1) == 0) {
                dense[(b >> 1) - first] += h0[b] + h1[b];
              }
              h0[b] = h1[b] = 0;
            }
          }
          if (per_tensor) {
            TensorBins& snap = tensor_bins[m].emplace_back();
            // Exactly sized: MemoryBound counts 8 bytes an entry.
            const size_t nonzero = static_cast<size_t>(
                dense.size() - std::count(dense.begin(), dense.end(), 0u));
            snap.bin.reserve(nonzero);
            snap.count.reserve(nonzero);
            for (size_t i = 0; i < dense.size(); ++i) {
              if (dense[i] == 0) continue;
              snap.bin.push_back(static_cast<uint32_t>(first + i));
              snap.count.push_back(dense[i]);
            }
            tensor_bins_size += snap.bin.size();
          }
        }
        if (per_tensor && tensor_bins_size > kMaxTensorBins) {
          per_tensor = false;
          tensor_bins.assign(nm, {});
        }
      }));

  // Locate each query's top bucket. Inside bucket b the entries with low
  // bits set come first (larger), then those equal to b << 16; when the k-th
  // is one of the latter the value is known now.
  struct Bucket {
    uint32_t bin;
    int64_t above;
    bool resolved;
  };
  std::vector<Bucket> bucket(queries.size());
  for (size_t q = 0; q < queries.size(); ++q) {
    const BinRange<uint64_t>& h = hi[slot[queries[q].model]];
    const int64_t k = queries[q].k;
    int64_t above = 0;
    // Bins above the counted range are empty.
    int b = static_cast<int>(h.hi() / 2);
    for (; b >= 0; --b) {
      const size_t i = static_cast<size_t>(b) << 1;
      const int64_t c = static_cast<int64_t>(h.at(i) + h.at(i + 1));
      if (above + c >= k) break;
      above += c;
    }
    if (b < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("selection rank ", k, " exceeds the domain"));
    }
    const size_t i = static_cast<size_t>(b) << 1;
    const int64_t set_low = static_cast<int64_t>(h.at(i + 1));
    bucket[q] = {static_cast<uint32_t>(b), above, above + set_low < k};
    if (bucket[q].resolved) {
      const uint32_t bits = static_cast<uint32_t>(b) << 16;
      SelectionResult& r = results[q];
      std::memcpy(&r.value, &bits, 4);
      r.count_greater = above + set_low;
      r.count_equal = static_cast<int64_t>(h.at(i));
      r.from_first_pass = true;
    }
  }

  // Ties kept per chunk, for queries that want them. A query resolved by
  // pass 1 counts its ties in pass 2 (a compare, not a list): in every
  // chunk, or, with per-tensor counts, only in the tensor where the kept
  // ties run out (those before keep all, those after none).
  std::vector<int> tie_tensor(queries.size(), -1);     // -1: every tensor
  std::vector<int64_t> tie_before(queries.size(), 0);  // ties kept before it
  std::vector<bool> visit(domain.size(), false);
  for (size_t q = 0; q < queries.size(); ++q) {
    if (!queries[q].ties_per_chunk) continue;
    SelectionResult& r = results[q];
    r.chunk_keep.assign(chunks.size(), 0);
    if (!bucket[q].resolved || !per_tensor) {
      visit.assign(domain.size(), true);
      continue;
    }
    const std::vector<TensorBins>& tb = tensor_bins[slot[queries[q].model]];
    const int64_t need = queries[q].k - r.count_greater;
    int64_t before = 0;
    size_t t = 0;
    for (; t + 1 < domain.size(); ++t) {
      const int64_t e = tb[t].at(bucket[q].bin);
      if (before + e >= need) break;
      before += e;
    }
    tie_tensor[q] = static_cast<int>(t);
    tie_before[q] = before;
    // The caller counts them in its own pass over that tensor.
    if (!queries[q].ties_in_pass) visit[t] = true;
    for (size_t ci = 0; ci < chunks.size(); ++ci) {
      if (static_cast<size_t>(chunks[ci].tensor) < t)
        r.chunk_keep[ci] = kAllTies;
    }
  }

  // Pass 2: low 16 bits inside each (model, bucket) of interest. A bucket
  // whose ties are wanted per chunk keeps its members' low bits per chunk
  // (lists) when small; others only a histogram.
  std::vector<std::vector<uint32_t>> wanted(nm);   // distinct bins per model
  std::vector<std::vector<size_t>> counted(nm);    // resolved, ties per chunk
  std::vector<std::vector<bool>> ties_wanted(nm);  // per wanted bin
  std::vector<int> models2;                        // models pass 2 reads
  for (size_t q = 0; q < queries.size(); ++q) {
    const size_t m = slot[queries[q].model];
    if (bucket[q].resolved && !queries[q].ties_per_chunk) continue;
    if (tie_tensor[q] >= 0 && queries[q].ties_in_pass) continue;
    if (wanted[m].empty() && counted[m].empty()) {
      models2.push_back(queries[q].model);
    }
    if (bucket[q].resolved) {
      counted[m].push_back(q);
      continue;
    }
    auto& w = wanted[m];
    const size_t k = static_cast<size_t>(
        std::find(w.begin(), w.end(), bucket[q].bin) - w.begin());
    if (k == w.size()) {
      w.push_back(bucket[q].bin);
      ties_wanted[m].push_back(false);
    }
    if (queries[q].ties_per_chunk) ties_wanted[m][k] = true;
  }
  if (models2.empty()) {
    return KeepFirstTies(queries, chunks, tie_tensor, tie_before,
                         std::move(results));
  }
  if (!std::all_of(wanted.begin(), wanted.end(),
                   [](const auto& w) { return w.empty(); })) {
    visit.assign(domain.size(), true);
  }
  size_t max_wanted = 0;
  for (const auto& w : wanted) max_wanted = std::max(max_wanted, w.size());
  const size_t slots = nm * max_wanted;  // index m * max_wanted + k
  std::vector<bool> listed(slots, false);
  for (size_t m = 0; m < nm; ++m) {
    for (size_t k = 0; k < wanted[m].size(); ++k) {
      const size_t i = static_cast<size_t>(wanted[m][k]) << 1;
      listed[m * max_wanted + k] =
          ties_wanted[m][k] && hi[m].at(i) + hi[m].at(i + 1) <= kMaxListed;
    }
  }
  std::vector<std::vector<std::vector<uint16_t>>> lists(slots);
  for (size_t i = 0; i < slots; ++i) {
    if (listed[i]) lists[i].resize(chunks.size());
  }
  std::vector<std::vector<uint32_t>> hist2(static_cast<size_t>(workers) *
                                           slots);
  std::vector<std::vector<uint64_t>> lo(slots, std::vector<uint64_t>(kBins, 0));
  MS_RETURN_IF_ERROR(ForEachChunk(
      domain, chunks, models2,
      [&](size_t ci, const DomainChunk& c, int w, const PlannedTensor& t,
          const float* base) -> absl::Status {
        Scratch& s = scratch[static_cast<size_t>(w)];
        for (size_t m = 0; m < nm; ++m) {
          // Counting only in the tensor where its kept ties run out.
          const bool counts =
              std::any_of(counted[m].begin(), counted[m].end(), [&](size_t q) {
                return tie_tensor[q] < 0 || tie_tensor[q] == c.tensor;
              });
          if (wanted[m].empty() && !counts) continue;
          const TensorView& mv = t.models[static_cast<size_t>(models[m])];
          const uint8_t* bf16 = Bf16Data(mv, c.begin);
          if (wanted[m].empty() && bf16 != nullptr && t.base.data != nullptr) {
            for (size_t q : counted[m]) {
              if (tie_tensor[q] >= 0 && c.tensor != tie_tensor[q]) continue;
              uint32_t want;
              std::memcpy(&want, &results[q].value, 4);
              results[q].chunk_keep[ci] =
                  CountEqualBf16(bf16, base, c.count, want);
            }
            continue;
          }
          MS_RETURN_IF_ERROR(MagnitudeBits(t, models[m], c.begin, c.count, base,
                                           s.value.data(), s.bits.data()));
          const uint32_t* bits = s.bits.data();
          for (size_t q : counted[m]) {
            if (tie_tensor[q] >= 0 && c.tensor != tie_tensor[q]) continue;
            uint32_t want;
            std::memcpy(&want, &results[q].value, 4);
            results[q].chunk_keep[ci] = CountEqual(bits, c.count, want);
          }
          for (size_t k = 0; k < wanted[m].size(); ++k) {
            const size_t slot_index = m * max_wanted + k;
            const uint32_t want = wanted[m][k];
            if (listed[slot_index]) {
              auto& out = lists[slot_index][ci];
              for (int64_t j = 0; j < c.count; ++j) {
                if ((bits[j] >> 16) == want) {
                  out.push_back(static_cast<uint16_t>(bits[j] & 0xffffu));
                }
              }
            } else {
              auto& h = hist2[static_cast<size_t>(w) * slots + slot_index];
              if (h.empty()) h.assign(kBins, 0);
              for (int64_t j = 0; j < c.count; ++j) {
                if ((bits[j] >> 16) == want) ++h[bits[j] & 0xffffu];
              }
            }
          }
        }
        return absl::OkStatus();
      },
      scratch,
      [&] {
        for (int w = 0; w < workers; ++w) {
          for (size_t i = 0; i < slots; ++i) {
            auto& h = hist2[static_cast<size_t>(w) * slots + i];
            if (h.empty()) continue;
            for (size_t b = 0; b < kBins; ++b) lo[i][b] += h[b];
            std::fill(h.begin(), h.end(), 0u);
          }
        }
      },
      &visit));
  for (size_t i = 0; i < slots; ++i) {
    if (!listed[i]) continue;
    for (const auto& l : lists[i]) {
      for (uint16_t v : l) ++lo[i][v];
    }
  }

  for (size_t q = 0; q < queries.size(); ++q) {
    if (bucket[q].resolved) continue;
    const size_t m = slot[queries[q].model];
    const auto& bins = wanted[m];
    const size_t k = static_cast<size_t>(
        std::find(bins.begin(), bins.end(), bucket[q].bin) - bins.begin());
    const size_t slot_index = m * max_wanted + k;
    const auto& h = lo[slot_index];
    int64_t above = bucket[q].above;
    int b = static_cast<int>(kBins) - 1;
    for (; b >= 0; --b) {
      const int64_t c = static_cast<int64_t>(h[static_cast<size_t>(b)]);
      if (above + c >= queries[q].k) break;
      above += c;
    }
    const uint32_t bits = (bucket[q].bin << 16) | static_cast<uint32_t>(b);
    SelectionResult r;
    std::memcpy(&r.value, &bits, 4);
    r.count_greater = above;
    r.count_equal = static_cast<int64_t>(h[static_cast<size_t>(b)]);
    if (queries[q].ties_per_chunk) {
      if (listed[slot_index]) {
        r.chunk_keep.resize(chunks.size());
        for (size_t ci = 0; ci < chunks.size(); ++ci) {
          int64_t e = 0;
          for (uint16_t v : lists[slot_index][ci])
            e += v == static_cast<uint16_t>(b);
          r.chunk_keep[ci] = e;
        }
      } else {
        MS_ASSIGN_OR_RETURN(
            r.chunk_keep,
            CountEqualPerChunk(domain, queries[q].model, r.value));
      }
    }
    results[q] = std::move(r);
  }
  return KeepFirstTies(queries, chunks, tie_tensor, tie_before,
                       std::move(results));
}

absl::StatusOr<std::vector<int64_t>> MagnitudeSelector::CountEqualPerChunk(
    const std::vector<const PlannedTensor*>& domain, int model,
    float value) const {
  const std::vector<DomainChunk> chunks = ChunkDomain(domain, chunk_elems_);
  std::vector<int64_t> counts(chunks.size(), 0);
  std::vector<Scratch> scratch(static_cast<size_t>(pool_.num_threads()));
  MS_RETURN_IF_ERROR(ForEachChunk(
      domain, chunks, {model},
      [&](size_t i, const DomainChunk& c, int w, const PlannedTensor& t,
          const float* base) -> absl::Status {
        Scratch& s = scratch[static_cast<size_t>(w)];
        MS_RETURN_IF_ERROR(MagnitudeBits(t, model, c.begin, c.count, base,
                                         s.value.data(), s.bits.data()));
        int64_t n = 0;
        for (int64_t j = 0; j < c.count; ++j) {
          n += s.value[static_cast<size_t>(j)] == value;
        }
        counts[i] = n;
        return absl::OkStatus();
      },
      scratch, [] {}));
  return counts;
}

absl::Status MagnitudeSelector::ForEachChunk(
    const std::vector<const PlannedTensor*>& domain,
    const std::vector<DomainChunk>& chunks, const std::vector<int>& models,
    const ChunkFn& fn, std::vector<Scratch>& scratch,
    const std::function<void()>& after_tensor,
    const std::vector<bool>* visit) const {
  FirstError error;
  size_t start = 0;
  for (size_t ti = 0; ti < domain.size(); ++ti) {
    size_t end = start;
    while (end < chunks.size() && chunks[end].tensor == static_cast<int>(ti))
      ++end;
    if (visit != nullptr && !(*visit)[ti]) {
      start = end;
      continue;
    }
    const PlannedTensor& t = *domain[ti];
    // A whole-model selection reads every tensor before the merge starts:
    // the next one this pass visits comes off the disk meanwhile, only the
    // inputs the pass reads.
    size_t next = ti + 1;
    while (next < domain.size() && visit != nullptr && !(*visit)[next]) ++next;
    if (next < domain.size()) {
      const PlannedTensor& n = *domain[next];
      PrefetchInputs(n, StagingArena::kHoldBytes, n.base.data != nullptr,
                     models);
    }
    const absl::Status staged = ForEachStagedChunk(
        pool_, staging_, t, t.base.data != nullptr, models, chunk_elems_,
        [&](int64_t i, int w, const PlannedTensor& in) {
          if (error.failed()) return;
          const size_t ci = start + static_cast<size_t>(i);
          const DomainChunk& c = chunks[ci];
          Scratch& s = scratch[static_cast<size_t>(w)];
          if (s.bits.size() < static_cast<size_t>(chunk_elems_)) {
            s.base.resize(static_cast<size_t>(chunk_elems_));
            s.value.resize(static_cast<size_t>(chunk_elems_));
            s.bits.resize(static_cast<size_t>(chunk_elems_));
          }
          absl::Status st = LoadBase(in, c.begin, c.count, s.base.data());
          if (st.ok()) st = fn(ci, c, w, in, s.base.data());
          if (!st.ok()) error.Set(std::move(st));
        });
    if (!staged.ok()) error.Set(staged);
    after_tensor();
    MS_RETURN_IF_ERROR(error.status());
    start = end;
  }
  return absl::OkStatus();
}

}  // namespace mergeserve
