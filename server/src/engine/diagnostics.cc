#include "mergeserve/engine/diagnostics.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/status_macros.h"
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
          {"cosine", t.cosine}};
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
  return t;
}

}  // namespace

std::string DiagnosticsToJson(const MergeDiagnostics& d) {
  nlohmann::json j = {{"method", d.method},
                      {"experts", d.experts},
                      {"overall", TensorJson(d.overall)}};
  j["tensors"] = nlohmann::json::array();
  for (const auto& t : d.tensors) j["tensors"].push_back(TensorJson(t));
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
  return collector.Finish(config.merge_method, experts);
}

}  // namespace mergeserve
