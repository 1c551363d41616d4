#include "methods/method_util.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/engine/merge_plan.h"

namespace mergeserve {

std::vector<int> NonBaseModels(const MergePlan& plan) {
  std::vector<int> out;
  for (size_t i = 0; i < plan.models().size(); ++i) {
    if (!plan.models()[i].is_base) out.push_back(static_cast<int>(i));
  }
  return out;
}

absl::StatusOr<int> BaseAndOneModel(const MergePlan& plan,
                                    const std::string& method) {
  if (plan.base() == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(method, " needs base_model"));
  }
  const std::vector<int> models = NonBaseModels(plan);
  if (models.size() != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        method, " merges the base with exactly 1 model, got ", models.size()));
  }
  return models[0];
}

absl::StatusOr<double> RequiredNumber(const MergePlan& plan,
                                      const std::string& method,
                                      const std::string& key, int model,
                                      const PlannedTensor& t) {
  constexpr double kUnset = std::numeric_limits<double>::quiet_NaN();
  MS_ASSIGN_OR_RETURN(double v, plan.Number(key, model, t, kUnset));
  if (std::isnan(v)) {
    return absl::InvalidArgumentError(absl::StrCat(
        method, " needs parameter '", key, "'",
        model >= 0
            ? absl::StrCat(" for model '",
                           plan.models()[static_cast<size_t>(model)].ref, "'")
            : std::string(),
        " (tensor '", t.name, "')"));
  }
  return v;
}

}  // namespace mergeserve
