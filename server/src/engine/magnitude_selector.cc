#include "mergeserve/engine/magnitude_selector.h"

#include <cmath>
#include <cstring>
#include <map>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/engine/merge_method.h"

namespace mergeserve {
namespace {

constexpr int kBins = 1 << 16;

// Per-worker scratch for one pass.
struct Scratch {
  std::vector<float> base, value;
  std::vector<uint32_t> bits;
};

// First error from any worker wins.
class ErrorSlot {
 public:
  void Set(absl::Status s) {
    std::lock_guard<std::mutex> lock(mu_);
    if (status_.ok()) status_ = std::move(s);
  }
  bool failed() {
    std::lock_guard<std::mutex> lock(mu_);
    return !status_.ok();
  }
  absl::Status Take() { return status_; }

 private:
  std::mutex mu_;
  absl::Status status_;
};

}  // namespace

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
  LoadF32(t.base, begin, count, base);
  if (!AllFinite(base, count)) {
    return NonFiniteError(t.name, *plan_.config().base_model);
  }
  return absl::OkStatus();
}

absl::Status MagnitudeSelector::MagnitudeBits(const PlannedTensor& t, int model,
                                              int64_t begin, int64_t count,
                                              const float* base, float* value,
                                              uint32_t* bits) const {
  const TensorView& mv = t.models[static_cast<size_t>(model)];
  LoadF32(mv, begin, count, value);
  if (!AllFinite(value, count)) {
    return NonFiniteError(t.name, plan_.models()[static_cast<size_t>(model)].ref);
  }
  if (t.base.data != nullptr) {
    for (int64_t j = 0; j < count; ++j) value[j] = std::fabs(value[j] - base[j]);
  } else {
    for (int64_t j = 0; j < count; ++j) value[j] = std::fabs(value[j]);
  }
  std::memcpy(bits, value, static_cast<size_t>(count) * 4);
  ReleaseRange(mv, begin, count);
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

  // Pass 1: histogram of the top 16 bits.
  std::vector<std::vector<uint32_t>> hist(
      static_cast<size_t>(workers) * nm, std::vector<uint32_t>(kBins, 0));
  std::vector<std::vector<uint64_t>> hi(nm, std::vector<uint64_t>(kBins, 0));
  ErrorSlot error;
  // Per-worker uint32 counts are flushed into uint64 totals per tensor-sized
  // batch; a chunk holds < 2^32 entries, so flushing every 4096 chunks is safe.
  auto run_pass = [&](auto&& per_chunk, auto&& flush) {
    const size_t batch = 4096;
    for (size_t start = 0; start < chunks.size(); start += batch) {
      const size_t n = std::min(batch, chunks.size() - start);
      pool_.Run(static_cast<int64_t>(n), [&](int64_t i, int w) {
        if (error.failed()) return;
        const DomainChunk& c = chunks[start + static_cast<size_t>(i)];
        Scratch& s = scratch[static_cast<size_t>(w)];
        if (s.bits.size() < static_cast<size_t>(c.count)) {
          s.base.resize(static_cast<size_t>(chunk_elems_));
          s.value.resize(static_cast<size_t>(chunk_elems_));
          s.bits.resize(static_cast<size_t>(chunk_elems_));
        }
        const PlannedTensor& t = *domain[static_cast<size_t>(c.tensor)];
        absl::Status st = LoadBase(t, c.begin, c.count, s.base.data());
        for (size_t m = 0; m < nm && st.ok(); ++m) {
          st = MagnitudeBits(t, models[m], c.begin, c.count, s.base.data(),
                             s.value.data(), s.bits.data());
          if (st.ok()) per_chunk(w, m, s.bits.data(), c.count);
        }
        if (!st.ok()) {
          error.Set(std::move(st));
          return;
        }
        if (t.base.data != nullptr) ReleaseRange(t.base, c.begin, c.count);
      });
      flush();
    }
  };
  auto flush_hist = [&](std::vector<std::vector<uint64_t>>& total) {
    for (int w = 0; w < workers; ++w) {
      for (size_t m = 0; m < nm; ++m) {
        auto& h = hist[static_cast<size_t>(w) * nm + m];
        auto& out = total[m];
        for (int b = 0; b < kBins; ++b) out[static_cast<size_t>(b)] += h[static_cast<size_t>(b)];
        std::fill(h.begin(), h.end(), 0u);
      }
    }
  };
  run_pass(
      [&](int w, size_t m, const uint32_t* bits, int64_t n) {
        uint32_t* h = hist[static_cast<size_t>(w) * nm + m].data();
        for (int64_t j = 0; j < n; ++j) ++h[bits[j] >> 16];
      },
      [&] { flush_hist(hi); });
  MS_RETURN_IF_ERROR(error.Take());

  // Locate each query's top bucket.
  struct Bucket {
    uint32_t bin;
    int64_t above;
  };
  std::vector<Bucket> bucket(queries.size());
  for (size_t q = 0; q < queries.size(); ++q) {
    const auto& h = hi[slot[queries[q].model]];
    int64_t above = 0;
    int b = kBins - 1;
    for (; b >= 0; --b) {
      const int64_t c = static_cast<int64_t>(h[static_cast<size_t>(b)]);
      if (above + c >= queries[q].k) break;
      above += c;
    }
    if (b < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("selection rank ", queries[q].k, " exceeds the domain"));
    }
    bucket[q] = {static_cast<uint32_t>(b), above};
  }

  // Pass 2: low 16 bits inside each (model, bucket) of interest.
  std::vector<std::vector<uint32_t>> wanted(nm);  // distinct bins per model
  for (size_t q = 0; q < queries.size(); ++q) {
    auto& w = wanted[slot[queries[q].model]];
    if (std::find(w.begin(), w.end(), bucket[q].bin) == w.end()) {
      w.push_back(bucket[q].bin);
    }
  }
  // Histograms indexed [worker][model][wanted bin] flattened.
  size_t max_wanted = 0;
  for (const auto& w : wanted) max_wanted = std::max(max_wanted, w.size());
  hist.assign(static_cast<size_t>(workers) * nm * max_wanted,
              std::vector<uint32_t>(kBins, 0));
  std::vector<std::vector<uint64_t>> lo(nm * max_wanted,
                                        std::vector<uint64_t>(kBins, 0));
  run_pass(
      [&](int w, size_t m, const uint32_t* bits, int64_t n) {
        const auto& bins = wanted[m];
        for (size_t k = 0; k < bins.size(); ++k) {
          uint32_t* h =
              hist[(static_cast<size_t>(w) * nm + m) * max_wanted + k].data();
          const uint32_t want = bins[k];
          for (int64_t j = 0; j < n; ++j) {
            if ((bits[j] >> 16) == want) ++h[bits[j] & 0xffffu];
          }
        }
      },
      [&] {
        for (int w = 0; w < workers; ++w) {
          for (size_t i = 0; i < nm * max_wanted; ++i) {
            auto& h = hist[static_cast<size_t>(w) * nm * max_wanted + i];
            for (int b = 0; b < kBins; ++b) lo[i][static_cast<size_t>(b)] += h[static_cast<size_t>(b)];
            std::fill(h.begin(), h.end(), 0u);
          }
        }
      });
  MS_RETURN_IF_ERROR(error.Take());

  for (size_t q = 0; q < queries.size(); ++q) {
    const size_t m = slot[queries[q].model];
    const auto& bins = wanted[m];
    const size_t k = static_cast<size_t>(
        std::find(bins.begin(), bins.end(), bucket[q].bin) - bins.begin());
    const auto& h = lo[m * max_wanted + k];
    int64_t above = bucket[q].above;
    int b = kBins - 1;
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
    results[q] = r;
  }
  return results;
}

absl::StatusOr<std::vector<int64_t>> MagnitudeSelector::CountEqualPerChunk(
    const std::vector<const PlannedTensor*>& domain, int model,
    float value) const {
  const std::vector<DomainChunk> chunks = ChunkDomain(domain, chunk_elems_);
  std::vector<int64_t> counts(chunks.size(), 0);
  std::vector<Scratch> scratch(static_cast<size_t>(pool_.num_threads()));
  ErrorSlot error;
  pool_.Run(static_cast<int64_t>(chunks.size()), [&](int64_t i, int w) {
    const DomainChunk& c = chunks[static_cast<size_t>(i)];
    Scratch& s = scratch[static_cast<size_t>(w)];
    s.base.resize(static_cast<size_t>(chunk_elems_));
    s.value.resize(static_cast<size_t>(chunk_elems_));
    s.bits.resize(static_cast<size_t>(chunk_elems_));
    const PlannedTensor& t = *domain[static_cast<size_t>(c.tensor)];
    absl::Status st = LoadBase(t, c.begin, c.count, s.base.data());
    if (st.ok()) {
      st = MagnitudeBits(t, model, c.begin, c.count, s.base.data(),
                         s.value.data(), s.bits.data());
    }
    if (!st.ok()) {
      error.Set(std::move(st));
      return;
    }
    int64_t n = 0;
    for (int64_t j = 0; j < c.count; ++j) n += s.value[static_cast<size_t>(j)] == value;
    counts[static_cast<size_t>(i)] = n;
  });
  MS_RETURN_IF_ERROR(error.Take());
  return counts;
}

}  // namespace mergeserve
