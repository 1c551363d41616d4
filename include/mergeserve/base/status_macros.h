// Early-return helpers for absl::Status / absl::StatusOr.
#ifndef MERGESERVE_BASE_STATUS_MACROS_H_
#define MERGESERVE_BASE_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MS_CONCAT_INNER_(a, b) a##b
#define MS_CONCAT_(a, b) MS_CONCAT_INNER_(a, b)

#define MS_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::absl::Status ms_status_ = (expr);      \
    if (!ms_status_.ok()) return ms_status_; \
  } while (0)

#define MS_ASSIGN_OR_RETURN(lhs, rexpr) \
  MS_ASSIGN_OR_RETURN_IMPL_(MS_CONCAT_(ms_statusor_, __LINE__), lhs, rexpr)

#define MS_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                              \
  if (!statusor.ok()) return statusor.status();         \
  lhs = std::move(statusor).value()

#endif  // MERGESERVE_BASE_STATUS_MACROS_H_
