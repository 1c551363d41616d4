#include "mergeserve/engine/method_registry.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/engine_aten.h"
#include "mergeserve/base/status_macros.h"
#include "methods/methods.h"

namespace mergeserve {

namespace {
// tsv, iso_c, iso_cts per element of a matrix, all fp64: τ_i, the sum or
// projection, dgesdd's copy, U and Vt, the stacked U and Vt, their polar
// factors' SVDs and products, and the result; 14 doubles with room.
constexpr int64_t kMatrixBytes = 14 * 8;
// Made by the LibTorch module (engine_aten_module.cc), loaded on first use.
constexpr std::unique_ptr<MergeMethod> (*kAten)() = nullptr;
}  // namespace

int64_t WholeTensorBytes(const MethodInfo* info, int64_t models,
                         int64_t numel) {
  // Every model's fp32 copy of the tensor plus a few temporaries.
  const int64_t copies = (models + 5) * numel * 4;
  if (info == nullptr || info->held_bytes_per_element == 0) return copies;
  return std::max(copies, info->held_bytes_per_element * numel);
}

const std::vector<MethodInfo>& AllMethods() {
  static const auto* kMethods = new std::vector<MethodInfo>{
      {"linear", "weighted average of the models", NewLinearMethod, true},
      {"task_arithmetic", "base + lambda * sum of weighted task vectors",
       NewTaskArithmeticMethod, true},
      {"ties", "trim, elect sign, disjoint merge", NewTiesMethod, true, true},
      {"dare_linear", "random drop and rescale, then task arithmetic",
       NewDareLinearMethod, true},
      {"dare_ties", "random drop and rescale, then TIES election",
       NewDareTiesMethod, true},
      {"breadcrumbs", "drop outliers and small updates, then task arithmetic",
       NewBreadcrumbsMethod, true, true},
      {"breadcrumbs_ties", "breadcrumbs sparsification with TIES election",
       NewBreadcrumbsTiesMethod, true, true},
      {"della", "magnitude-ranked sampling with TIES election", NewDellaMethod,
       true, false, true},
      {"della_linear", "magnitude-ranked sampling, then task arithmetic",
       NewDellaLinearMethod, true, false, true},
      {"slerp", "spherical interpolation of two models", kAten},
      {"model_stock", "geometric interpolation towards the base",
       NewModelStockMethod, true},
      {"fisher",
       "Fisher-weighted average (diagonals from the server or client)", kAten},
      {"regmean",
       "closed-form regression mean (Grams from the server or client)", kAten},
      {"nuslerp",
       "slerp of two models (or task vectors) by weight, per "
       "tensor, row or column",
       kAten},
      {"multislerp",
       "spherical barycentre of several models (or task "
       "vectors)",
       kAten},
      {"karcher", "Riemannian mean of the models on the sphere", kAten},
      {"sce",
       "select by variance, weight by mean square, erase sign "
       "conflicts",
       kAten},
      {"nearswap", "take the model's value where it is within t of the base",
       kAten},
      {"arcee_fusion", "take the model's entries of outlying importance",
       kAten},
      {"passthrough",
       "copy one model (times `scale`); with slices, stack "
       "layers",
       NewPassthroughMethod},
      {"ram",
       "keep entries one task vector changes, average those several "
       "change",
       kAten},
      {"ramplus_tl",
       "ram, with each model's unique entries scaled by its share of "
       "shared ones",
       kAten},
      {"tsv",
       "per matrix, each task's top singular vectors, orthogonalised "
       "(TSV-Merge)",
       kAten, false, false, false, kMatrixBytes},
      {"iso_c", "per matrix, the summed task matrix with a flat spectrum",
       kAten, false, false, false, kMatrixBytes},
      {"iso_cts",
       "iso_c on a common subspace plus each task's own directions outside "
       "it",
       kAten, false, false, false, kMatrixBytes},
      {"consensus_ta",
       "task arithmetic keeping entries at least k tasks' TALL masks mark",
       NewConsensusTaMethod},
      {"consensus_ties",
       "TIES (paper preset, disjoint sum) keeping entries at least k tasks' "
       "TALL masks mark",
       NewConsensusTiesMethod},
  };
  return *kMethods;
}

const MethodInfo* FindMethod(const std::string& name) {
  for (const MethodInfo& m : AllMethods()) {
    if (name == m.name) return &m;
  }
  return nullptr;
}

absl::StatusOr<std::unique_ptr<MergeMethod>> CreateMethod(
    const std::string& name) {
  const MethodInfo* info = FindMethod(name);
  if (info == nullptr) {
    std::string known;
    for (const MethodInfo& m : AllMethods()) {
      absl::StrAppend(&known, known.empty() ? "" : ", ", m.name);
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "config: unknown merge_method '", name, "' (known: ", known, ")"));
  }
  if (info->create != nullptr) return info->create();
  MS_ASSIGN_OR_RETURN(const EngineAtenTable* aten,
                      EngineAten(absl::StrCat("merge_method '", name, "'")));
  std::unique_ptr<MergeMethod> method = aten->new_method(name);
  if (method == nullptr) {
    return absl::InternalError(
        absl::StrCat("the LibTorch module has no merge_method '", name, "'"));
  }
  return method;
}

}  // namespace mergeserve
