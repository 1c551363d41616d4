// model_stock (Jang et al.): t = N·cos / (1 + (N−1)·cos) from the mean
// pairwise cosine of the task vectors; θ = t·mean θ_i + (1 − t)·θ0.
// filter_wise: one t per row instead of per tensor (mergekit).
//
// The fused backend streams in two passes over fixed chunks, like the
// selection passes: the first sums each row's dot products and squared
// norms (in double, per chunk, added in chunk order so the result does not
// depend on threads), the second writes t·mean + (1 − t)·θ0 with the same
// float operations as the ATen path (model_stock_aten.cc, in the LibTorch
// module). Memory: a few chunks per worker, not every model's copy of the
// tensor.
#include <algorithm>
#include <cmath>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "engine/engine_aten.h"
#include "mergeserve/base/status_macros.h"
#include "methods/methods.h"

namespace mergeserve {
namespace {

class ModelStockMethod : public MergeMethod {
 public:
  absl::Status Prepare(const MergePlan& plan, ExecContext&) override {
    if (plan.base() == nullptr) {
      return absl::InvalidArgumentError("model_stock needs base_model");
    }
    experts_.clear();
    for (size_t i = 0; i < plan.models().size(); ++i) {
      if (!plan.models()[i].is_base) experts_.push_back(static_cast<int>(i));
    }
    if (experts_.size() < 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model_stock needs at least 2 models besides the base, got ",
          experts_.size()));
    }
    MS_ASSIGN_OR_RETURN(filter_wise_, plan.Bool("filter_wise", false));
    return absl::OkStatus();
  }

  bool HoldsWholeTensors(const ExecContext& ctx) const override {
    return ctx.backend == Backend::kAten;
  }

  absl::Status MergeTensor(const MergePlan& plan, const PlannedTensor& t,
                           ExecContext& ctx, TensorSink& out) override {
    if (ctx.backend == Backend::kAten) {
      MS_ASSIGN_OR_RETURN(const EngineAtenTable* aten,
                          EngineAten("backend: aten"));
      return aten->merge_model_stock(plan, t, experts_, filter_wise_, ctx, out);
    }
    return MergeStreamed(plan, t, ctx, out);
  }

 private:
  // Reads a chunk of model `m` (-1: the base) as fp32, minus `base` when
  // given.
  absl::Status Load(const MergePlan& plan, const PlannedTensor& t, int m,
                    int64_t begin, int64_t count, const float* base,
                    float* dst) const {
    const TensorView& v = m < 0 ? t.base : t.models[static_cast<size_t>(m)];
    if (!LoadDelta(v, begin, count, base, dst)) {
      return NonFiniteError(t.name,
                            m < 0 ? *plan.config().base_model
                                  : plan.models()[static_cast<size_t>(m)].ref);
    }
    return absl::OkStatus();
  }

  absl::Status MergeStreamed(const MergePlan& plan, const PlannedTensor& t,
                             ExecContext& ctx, TensorSink& out) const {
    const int64_t numel = t.numel;
    if (numel == 0) return absl::OkStatus();
    const int64_t len = filter_wise_ && !t.shape.empty() && t.shape.back() > 0
                            ? t.shape.back()
                            : numel;
    const int64_t rows = numel / len;
    const size_t e = experts_.size();
    const size_t pairs = e * (e - 1) / 2;
    const size_t stats = e + pairs;  // squared norms, then dot products
    const int64_t chunk = ctx.chunk_elems;
    const int64_t chunks = (numel + chunk - 1) / chunk;
    const int workers = ctx.pool->num_threads();
    struct Scratch {
      std::vector<float> base;
      std::vector<std::vector<float>> x;
    };
    std::vector<Scratch> scratch(static_cast<size_t>(workers));
    auto buffers = [&](int w) -> Scratch& {
      Scratch& s = scratch[static_cast<size_t>(w)];
      if (s.base.empty()) {
        s.base.resize(static_cast<size_t>(chunk));
        s.x.assign(e, std::vector<float>(static_cast<size_t>(chunk)));
      }
      return s;
    };
    std::mutex mu;
    absl::Status error;
    auto fail = [&](absl::Status st) {
      std::lock_guard<std::mutex> lock(mu);
      if (error.ok()) error = std::move(st);
    };
    // Runs body(scratch, chunk, begin, n) on every chunk once the base and
    // each expert (minus the base when `deltas`) are loaded.
    auto pass = [&](bool deltas,
                    const std::function<absl::Status(Scratch&, int64_t, int64_t,
                                                     int64_t)>& body) {
      absl::Status staged = ForEachStagedChunk(
          *ctx.pool, ctx.staging, t, /*base=*/true, experts_, chunk,
          [&](int64_t ci, int w, const PlannedTensor& in) {
            Scratch& s = buffers(w);
            const int64_t begin = ci * chunk;
            const int64_t n = std::min(chunk, numel - begin);
            absl::Status st =
                Load(plan, in, -1, begin, n, nullptr, s.base.data());
            for (size_t i = 0; st.ok() && i < e; ++i) {
              st = Load(plan, in, experts_[i], begin, n,
                        deltas ? s.base.data() : nullptr, s.x[i].data());
            }
            if (st.ok()) st = body(s, ci, begin, n);
            if (!st.ok()) fail(std::move(st));
          });
      if (!staged.ok()) fail(std::move(staged));
      return error;
    };

    // Pass 1: per chunk, the sums of each row segment it covers.
    std::vector<std::vector<double>> partial(static_cast<size_t>(chunks));
    MS_RETURN_IF_ERROR(pass(
        true,
        [&](Scratch& s, int64_t ci, int64_t begin, int64_t n) -> absl::Status {
          const int64_t r0 = begin / len;
          const int64_t r1 = (begin + n - 1) / len;
          std::vector<double>& sums = partial[static_cast<size_t>(ci)];
          sums.assign(static_cast<size_t>(r1 - r0 + 1) * stats, 0.0);
          for (int64_t r = r0; r <= r1; ++r) {
            const int64_t a = std::max(begin, r * len) - begin;
            const int64_t b = std::min(begin + n, (r + 1) * len) - begin;
            double* out_sums = sums.data() + (r - r0) * stats;
            size_t k = e;
            for (size_t i = 0; i < e; ++i) {
              const float* xi = s.x[i].data();
              double sq = 0;
              for (int64_t j = a; j < b; ++j) sq += double(xi[j]) * xi[j];
              out_sums[i] = sq;
              for (size_t q = i + 1; q < e; ++q, ++k) {
                const float* xq = s.x[q].data();
                double dot = 0;
                for (int64_t j = a; j < b; ++j) dot += double(xi[j]) * xq[j];
                out_sums[k] = dot;
              }
            }
          }
          return absl::OkStatus();
        }));
    if (ctx.is_cancelled()) return absl::CancelledError("merge cancelled");
    std::vector<double> total(static_cast<size_t>(rows) * stats, 0.0);
    for (int64_t ci = 0; ci < chunks; ++ci) {
      const int64_t r0 = ci * chunk / len;
      const std::vector<double>& sums = partial[static_cast<size_t>(ci)];
      for (size_t i = 0; i < sums.size(); ++i) {
        total[static_cast<size_t>(r0) * stats + i] += sums[i];
      }
    }
    partial.clear();
    // t per row, in the float operations the ATen path uses.
    const float nf = static_cast<float>(e);
    std::vector<float> tt(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
      const double* sums = total.data() + r * static_cast<int64_t>(stats);
      float cos_sum = 0;
      size_t k = e;
      for (size_t i = 0; i < e; ++i) {
        for (size_t q = i + 1; q < e; ++q, ++k) {
          const float norm = static_cast<float>(std::sqrt(sums[i])) *
                             static_cast<float>(std::sqrt(sums[q]));
          const float c =
              std::min(1.f, std::max(-1.f, static_cast<float>(sums[k]) /
                                               std::max(norm, 1e-6f)));
          cos_sum = k == e ? c : cos_sum + c;
        }
      }
      const float cos = cos_sum / static_cast<float>(pairs);
      tt[static_cast<size_t>(r)] = (cos * nf) / ((cos * (nf - 1)) + 1);
    }

    // Pass 2: θ = t·mean θ_i + (1 − t)·θ0.
    MS_RETURN_IF_ERROR(pass(
        false,
        [&](Scratch& s, int64_t, int64_t begin, int64_t n) -> absl::Status {
          float* avg = s.x[0].data();
          for (size_t i = 1; i < e; ++i) {
            const float* xi = s.x[i].data();
            for (int64_t j = 0; j < n; ++j) avg[j] = avg[j] + xi[j];
          }
          const float* w0 = s.base.data();
          for (int64_t j = 0; j < n; ++j) {
            const float a = avg[j] / nf;
            const float tj = tt[static_cast<size_t>((begin + j) / len)];
            avg[j] = tj * a + (1 - tj) * w0[j];
          }
          return out.WriteF32(begin, avg, n);
        }));
    if (ctx.is_cancelled()) return absl::CancelledError("merge cancelled");
    return absl::OkStatus();
  }

  std::vector<int> experts_;
  bool filter_wise_ = false;
};

}  // namespace

std::unique_ptr<MergeMethod> NewModelStockMethod() {
  return std::make_unique<ModelStockMethod>();
}

}  // namespace mergeserve
