#include "mergeserve/engine/diagnostics.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "engine/dense_matrix.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/engine/merge_method.h"
#include "mergeserve/engine/method_registry.h"
#include "nlohmann/json.hpp"

namespace mergeserve {

void DiagnosticSums::Resize(size_t n) {
  kept.assign(n, 0);
  tau_sq.assign(n, 0);
  dots.assign(n * (n - 1) / 2, 0);
}

void DiagnosticSums::Add(const DiagnosticSums& o) {
  if (kept.size() != o.kept.size()) Resize(o.kept.size());
  numel += o.numel;
  for (size_t i = 0; i < kept.size(); ++i) {
    kept[i] += o.kept[i];
    tau_sq[i] += o.tau_sq[i];
  }
  for (size_t i = 0; i < dots.size(); ++i) dots[i] += o.dots[i];
  multi_kept += o.multi_kept;
  conflicts += o.conflicts;
  merged_sq += o.merged_sq;
}

void DiagnosticsCollector::Add(const std::string& tensor, int64_t chunk,
                               const DiagnosticSums& sums) {
  std::lock_guard<std::mutex> lock(mu_);
  entries_.push_back({tensor, chunk, sums});
}

TensorDiagnostics Summarize(const std::string& name, const DiagnosticSums& s) {
  TensorDiagnostics d;
  d.name = name;
  d.numel = s.numel;
  const size_t n = s.kept.size();
  for (size_t i = 0; i < n; ++i) {
    d.kept_fraction.push_back(s.numel ? static_cast<double>(s.kept[i]) / s.numel
                                      : 0);
    d.tau_norm.push_back(std::sqrt(s.tau_sq[i]));
  }
  d.conflict_rate =
      s.multi_kept ? static_cast<double>(s.conflicts) / s.multi_kept : 0;
  d.merged_norm = std::sqrt(s.merged_sq);
  d.cosine.assign(n, std::vector<double>(n, 1.0));
  size_t p = 0;
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = i + 1; j < n; ++j, ++p) {
      const double denom = d.tau_norm[i] * d.tau_norm[j];
      const double c = denom > 0 ? s.dots[p] / denom : 0;
      d.cosine[i][j] = d.cosine[j][i] = c;
    }
  }
  return d;
}

MergeDiagnostics DiagnosticsCollector::Finish(
    const std::string& method, const std::vector<std::string>& experts) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Entry> sorted = entries_;
  std::map<std::string, size_t> first_seen;
  for (size_t i = 0; i < entries_.size(); ++i) {
    first_seen.emplace(entries_[i].tensor, i);
  }
  std::stable_sort(
      sorted.begin(), sorted.end(), [&](const Entry& a, const Entry& b) {
        const size_t fa = first_seen[a.tensor], fb = first_seen[b.tensor];
        return fa != fb ? fa < fb : a.chunk < b.chunk;
      });
  MergeDiagnostics out;
  out.method = method;
  out.experts = experts;
  DiagnosticSums total, current;
  total.Resize(experts.size());
  std::string name;
  auto flush = [&] {
    if (name.empty()) return;
    out.tensors.push_back(Summarize(name, current));
    total.Add(current);
  };
  for (const Entry& e : sorted) {
    if (e.tensor != name) {
      flush();
      name = e.tensor;
      current = DiagnosticSums();
      current.Resize(experts.size());
    }
    current.Add(e.sums);
  }
  flush();
  out.overall = Summarize("(all merged tensors)", total);
  return out;
}

double MeanPairwise(const std::vector<std::vector<double>>& m) {
  double sum = 0;
  int pairs = 0;
  for (size_t i = 0; i < m.size(); ++i) {
    for (size_t j = i + 1; j < m[i].size(); ++j, ++pairs) sum += m[i][j];
  }
  return pairs > 0 ? sum / pairs : 0;
}

std::vector<LayerDiagnostics> SummarizeLayers(
    const std::vector<TensorDiagnostics>& tensors) {
  struct Acc {
    double conflicts = 0, overlap = 0;
    int64_t numel = 0;
    int matrices = 0;
  };
  std::map<int, Acc> by_layer;
  for (const TensorDiagnostics& t : tensors) {
    Acc& a = by_layer[LayerIndexOf(t.name)];
    a.conflicts += t.conflict_rate * static_cast<double>(t.numel);
    a.numel += t.numel;
    if (!t.subspace_overlap.empty()) {
      a.overlap += MeanPairwise(t.subspace_overlap);
      ++a.matrices;
    }
  }
  std::vector<LayerDiagnostics> out;
  for (const auto& [layer, a] : by_layer) {
    LayerDiagnostics l;
    l.layer = layer;
    l.conflict_rate = a.numel > 0 ? a.conflicts / a.numel : 0;
    l.subspace_overlap = a.matrices > 0 ? a.overlap / a.matrices : 0;
    l.matrices = a.matrices;
    out.push_back(l);
  }
  // Tensors outside layers (embeddings, norms) last.
  if (!out.empty() && out.front().layer < 0) {
    std::rotate(out.begin(), out.begin() + 1, out.end());
  }
  return out;
}

namespace {

// τ_i = θ_i − θ0 of a 2-D tensor as fp64.
absl::StatusOr<DenseMatrix> TaskMatrix(const MergePlan& plan,
                                       const PlannedTensor& t, int model,
                                       const std::vector<float>& base) {
  MS_ASSIGN_OR_RETURN(
      std::vector<float> x,
      LoadWholeF32(t.models[static_cast<size_t>(model)], t.name,
                   plan.models()[static_cast<size_t>(model)].ref));
  DenseMatrix m(t.shape[0], t.shape[1]);
  for (size_t j = 0; j < m.data.size(); ++j) {
    m.data[j] = static_cast<double>(x[j]) - base[j];
  }
  return m;
}

struct Overlap {
  std::vector<std::vector<double>> pairwise;
  int64_t rank = 0;
};

// The subspace overlaps of every matrix the merge touches (see
// TensorDiagnostics::subspace_overlap), by tensor name.
absl::StatusOr<std::map<std::string, Overlap>> SubspaceOverlaps(
    const MergePlan& plan, const std::atomic<bool>* cancelled) {
  std::map<std::string, Overlap> out;
  if (plan.base() == nullptr) return out;
  std::vector<int> experts;
  for (size_t i = 0; i < plan.models().size(); ++i) {
    if (!plan.models()[i].is_base) experts.push_back(static_cast<int>(i));
  }
  const size_t n = experts.size();
  for (const PlannedTensor& t : plan.tensors()) {
    if (!t.merge || t.shape.size() != 2 || t.base.data == nullptr) continue;
    if (cancelled != nullptr && cancelled->load()) {
      return absl::CancelledError("analysis cancelled");
    }
    const int64_t m = t.shape[0], r = std::min(t.shape[0], t.shape[1]);
    const int64_t k = std::max<int64_t>(1, r / static_cast<int64_t>(n));
    if (r == 0) continue;
    MS_ASSIGN_OR_RETURN(
        std::vector<float> base,
        LoadWholeF32(t.base, t.name, *plan.config().base_model));
    std::vector<DenseMatrix> tops;
    for (int e : experts) {
      MS_ASSIGN_OR_RETURN(DenseMatrix tau, TaskMatrix(plan, t, e, base));
      MS_ASSIGN_OR_RETURN(ThinSvd svd, ComputeThinSvd(tau));
      DenseMatrix top(m, k);
      for (int64_t row = 0; row < m; ++row) {
        std::copy_n(svd.u.row(row), k, top.row(row));
      }
      tops.push_back(std::move(top));
    }
    Overlap o;
    o.rank = k;
    o.pairwise.assign(n, std::vector<double>(n, 1.0));
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = i + 1; j < n; ++j) {
        MS_ASSIGN_OR_RETURN(const DenseMatrix c,
                            MatMulTransA(tops[i], tops[j]));
        double f = 0;
        for (double v : c.data) f += v * v;
        o.pairwise[i][j] = o.pairwise[j][i] = f / static_cast<double>(k);
      }
    }
    out[t.name] = std::move(o);
  }
  return out;
}

}  // namespace

bool IsAnalyzable(const std::string& method) {
  const MethodInfo* info = FindMethod(method);
  return info != nullptr && info->streams && method != "linear";
}

namespace {

nlohmann::json TensorJson(const TensorDiagnostics& t) {
  return {{"name", t.name},
          {"numel", t.numel},
          {"kept_fraction", t.kept_fraction},
          {"conflict_rate", t.conflict_rate},
          {"tau_norm", t.tau_norm},
          {"merged_norm", t.merged_norm},
          {"cosine", t.cosine},
          {"subspace_rank", t.subspace_rank},
          {"subspace_overlap", t.subspace_overlap}};
}

TensorDiagnostics TensorFromJson(const nlohmann::json& j) {
  TensorDiagnostics t;
  t.name = j.value("name", "");
  t.numel = j.value("numel", int64_t{0});
  t.kept_fraction = j.value("kept_fraction", std::vector<double>());
  t.conflict_rate = j.value("conflict_rate", 0.0);
  t.tau_norm = j.value("tau_norm", std::vector<double>());
  t.merged_norm = j.value("merged_norm", 0.0);
  t.cosine = j.value("cosine", std::vector<std::vector<double>>());
  t.subspace_rank = j.value("subspace_rank", int64_t{0});
  t.subspace_overlap =
      j.value("subspace_overlap", std::vector<std::vector<double>>());
  return t;
}

}  // namespace

std::string DiagnosticsToJson(const MergeDiagnostics& d) {
  nlohmann::json j = {{"method", d.method},
                      {"experts", d.experts},
                      {"overall", TensorJson(d.overall)}};
  j["tensors"] = nlohmann::json::array();
  for (const auto& t : d.tensors) j["tensors"].push_back(TensorJson(t));
  j["layers"] = nlohmann::json::array();
  for (const auto& l : d.layers) {
    j["layers"].push_back({{"layer", l.layer},
                           {"conflict_rate", l.conflict_rate},
                           {"subspace_overlap", l.subspace_overlap},
                           {"matrices", l.matrices}});
  }
  return j.dump();
}

absl::StatusOr<MergeDiagnostics> DiagnosticsFromJson(const std::string& text) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object()) {
    return absl::DataLossError("stored diagnostics are not a JSON object");
  }
  try {
    MergeDiagnostics d;
    d.method = j.value("method", "");
    d.experts = j.value("experts", std::vector<std::string>());
    if (j.contains("overall")) d.overall = TensorFromJson(j["overall"]);
    for (const auto& t : j.value("tensors", nlohmann::json::array())) {
      d.tensors.push_back(TensorFromJson(t));
    }
    for (const auto& l : j.value("layers", nlohmann::json::array())) {
      LayerDiagnostics layer;
      layer.layer = l.value("layer", -1);
      layer.conflict_rate = l.value("conflict_rate", 0.0);
      layer.subspace_overlap = l.value("subspace_overlap", 0.0);
      layer.matrices = l.value("matrices", 0);
      d.layers.push_back(layer);
    }
    return d;
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(
        absl::StrCat("stored diagnostics are malformed: ", e.what()));
  }
}

absl::Status AnalyzableError(const std::string& method) {
  if (FindMethod(method) == nullptr) return CreateMethod(method).status();
  return absl::InvalidArgumentError(
      absl::StrCat("analyze covers the task-vector methods (task_arithmetic, "
                   "ties, dare_*, breadcrumbs*), not '",
                   method, "'"));
}

absl::StatusOr<MergeDiagnostics> AnalyzeMerge(const MergeConfig& config,
                                              MergeOptions options) {
  if (!IsAnalyzable(config.merge_method)) {
    return AnalyzableError(config.merge_method);
  }
  ModelResolver resolver = options.resolver
                               ? options.resolver
                               : LocalPathResolver(config.source_dir);
  MS_ASSIGN_OR_RETURN(std::unique_ptr<MergePlan> plan,
                      MergePlan::Create(config, resolver));
  return AnalyzeMergePlan(std::move(plan), std::move(options));
}

absl::StatusOr<MergeDiagnostics> AnalyzeMergePlan(
    std::unique_ptr<MergePlan> plan, MergeOptions options) {
  const MergeConfig config = plan->config();
  if (!IsAnalyzable(config.merge_method)) {
    return AnalyzableError(config.merge_method);
  }
  // The overlaps need whole matrices (an SVD per expert), so they are
  // computed before the streaming pass, a matrix at a time.
  MS_ASSIGN_OR_RETURN(auto overlaps,
                      SubspaceOverlaps(*plan, options.cancelled));
  DiagnosticsCollector collector;
  options.dry_run = true;
  options.backend = Backend::kFused;
  options.diagnostics = &collector;
  MS_RETURN_IF_ERROR(RunMergePlan(std::move(plan), options).status());
  std::vector<std::string> experts;
  const std::string base = config.base_model.value_or("");
  for (const ModelEntry& m : config.models) {
    if (m.model != base) experts.push_back(m.model);
  }
  MergeDiagnostics d = collector.Finish(config.merge_method, experts);
  const size_t n = experts.size();
  std::vector<std::vector<double>> mean(n, std::vector<double>(n, 0.0));
  int matrices = 0;
  for (TensorDiagnostics& t : d.tensors) {
    auto it = overlaps.find(t.name);
    if (it == overlaps.end() || it->second.pairwise.size() != n) continue;
    t.subspace_overlap = it->second.pairwise;
    t.subspace_rank = it->second.rank;
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < n; ++j) mean[i][j] += t.subspace_overlap[i][j];
    }
    ++matrices;
  }
  if (matrices > 0) {
    for (auto& row : mean) {
      for (double& v : row) v /= matrices;
    }
    d.overall.subspace_overlap = std::move(mean);
  }
  d.layers = SummarizeLayers(d.tensors);
  return d;
}

}  // namespace mergeserve
