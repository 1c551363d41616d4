#include "mergeserve/engine/param_value.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "mergeserve/base/status_macros.h"

namespace mergeserve {

double InterpolateGradient(const std::vector<double>& points, double t) {
  if (points.empty()) return 0;
  if (points.size() == 1) return points[0];
  t = std::clamp(t, 0.0, 1.0);
  const double scaled = t * static_cast<double>(points.size() - 1);
  const size_t i0 =
      std::min(static_cast<size_t>(std::floor(scaled)), points.size() - 2);
  const double frac = scaled - static_cast<double>(i0);
  return points[i0] * (1 - frac) + points[i0 + 1] * frac;
}

absl::StatusOr<double> ParamValue::ResolveNumber(const std::string& key,
                                                 const std::string& tensor_name,
                                                 double t) const {
  if (const auto* d = std::get_if<double>(&v_)) return *d;
  if (const auto* b = std::get_if<bool>(&v_)) return *b ? 1.0 : 0.0;
  if (const auto* g = std::get_if<Gradient>(&v_)) {
    return InterpolateGradient(g->points, t);
  }
  if (std::holds_alternative<FilterList>(v_)) {
    MS_ASSIGN_OR_RETURN(std::optional<double> v,
                        TryResolveNumber(key, tensor_name, t));
    if (v) return *v;
    return absl::InvalidArgumentError(
        absl::StrCat("parameter '", key, "': no filter matches tensor '",
                     tensor_name, "' and there is no default entry"));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "parameter '", key, "' must be a number, got ", DebugString()));
}

absl::StatusOr<std::optional<double>> ParamValue::TryResolveNumber(
    const std::string& key, const std::string& tensor_name, double t) const {
  if (const auto* f = std::get_if<FilterList>(&v_)) {
    // First match wins; no filter or "*" matches every tensor (mergekit's
    // ConfigReader).
    for (const auto& e : *f) {
      if (!e.filter || *e.filter == "*" ||
          tensor_name.find(*e.filter) != std::string::npos) {
        MS_ASSIGN_OR_RETURN(double v,
                            e.value[0].ResolveNumber(key, tensor_name, t));
        return std::optional<double>(v);
      }
    }
    return std::optional<double>();
  }
  MS_ASSIGN_OR_RETURN(double v, ResolveNumber(key, tensor_name, t));
  return std::optional<double>(v);
}

absl::StatusOr<bool> ParamValue::AsBool(const std::string& key) const {
  if (const auto* b = std::get_if<bool>(&v_)) return *b;
  if (const auto* d = std::get_if<double>(&v_)) {
    if (*d == 0 || *d == 1) return *d != 0;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "parameter '", key, "' must be true or false, got ", DebugString()));
}

absl::StatusOr<std::string> ParamValue::AsString(const std::string& key) const {
  if (const auto* s = std::get_if<std::string>(&v_)) return *s;
  return absl::InvalidArgumentError(absl::StrCat(
      "parameter '", key, "' must be a string, got ", DebugString()));
}

std::string ParamValue::DebugString() const {
  if (const auto* d = std::get_if<double>(&v_)) return absl::StrCat(*d);
  if (const auto* b = std::get_if<bool>(&v_)) return *b ? "true" : "false";
  if (const auto* s = std::get_if<std::string>(&v_)) return "'" + *s + "'";
  if (const auto* g = std::get_if<Gradient>(&v_)) {
    return absl::StrCat("[", absl::StrJoin(g->points, ", "), "]");
  }
  const auto& f = std::get<FilterList>(v_);
  std::string out = "[";
  for (const auto& e : f) {
    absl::StrAppend(&out, "{", e.filter ? "filter: " + *e.filter + ", " : "",
                    "value: ", e.value[0].DebugString(), "} ");
  }
  return out + "]";
}

}  // namespace mergeserve
