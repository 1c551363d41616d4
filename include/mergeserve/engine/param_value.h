// A merge parameter as written in the config: a number, bool or string, a
// layer gradient (list of numbers interpolated over the layer index), or a
// filter list ([{filter: substring, value: ...}, {value: default}]).
#ifndef MERGESERVE_ENGINE_PARAM_VALUE_H_
#define MERGESERVE_ENGINE_PARAM_VALUE_H_

#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"

namespace mergeserve {

class ParamValue {
 public:
  struct Gradient {
    std::vector<double> points;
  };
  struct FilterEntry {
    std::optional<std::string> filter;  // substring of the tensor name
    std::vector<ParamValue> value;      // exactly one element
  };
  using FilterList = std::vector<FilterEntry>;

  ParamValue() : v_(0.0) {}
  static ParamValue Number(double d) { return ParamValue(d); }
  static ParamValue Bool(bool b) { return ParamValue(b); }
  static ParamValue String(std::string s) { return ParamValue(std::move(s)); }
  static ParamValue OfGradient(std::vector<double> p) {
    return ParamValue(Gradient{std::move(p)});
  }
  static ParamValue OfFilters(FilterList f) { return ParamValue(std::move(f)); }

  bool is_number() const { return std::holds_alternative<double>(v_); }
  bool is_bool() const { return std::holds_alternative<bool>(v_); }
  bool is_string() const { return std::holds_alternative<std::string>(v_); }
  bool is_gradient() const { return std::holds_alternative<Gradient>(v_); }
  bool is_filters() const { return std::holds_alternative<FilterList>(v_); }

  // The number for a tensor: gradients interpolate at layer position t in
  // [0, 1]; filter lists pick the first entry whose filter occurs in the name
  // (an entry without filter is the default). `key` only names the parameter
  // in errors.
  // Like ResolveNumber, but a filter list that matches nothing gives no
  // value (the lookup falls through to the next level) instead of an error.
  absl::StatusOr<std::optional<double>> TryResolveNumber(
      const std::string& key, const std::string& tensor_name, double t) const;
  absl::StatusOr<double> ResolveNumber(const std::string& key,
                                       const std::string& tensor_name,
                                       double t) const;
  absl::StatusOr<bool> AsBool(const std::string& key) const;
  // The points of a gradient / the entries of a filter list (the value must
  // be one).
  const std::vector<double>& gradient() const {
    return std::get<Gradient>(v_).points;
  }
  const FilterList& filters() const { return std::get<FilterList>(v_); }
  absl::StatusOr<std::string> AsString(const std::string& key) const;
  std::string DebugString() const;

 private:
  template <typename T>
  explicit ParamValue(T v) : v_(std::move(v)) {}
  std::variant<double, bool, std::string, Gradient, FilterList> v_;
};

using ParamMap = std::map<std::string, ParamValue>;

// Piecewise-linear interpolation of evenly spaced points over t in [0, 1].
double InterpolateGradient(const std::vector<double>& points, double t);

}  // namespace mergeserve

#endif  // MERGESERVE_ENGINE_PARAM_VALUE_H_
