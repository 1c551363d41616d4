// Conversions between registry records and their mergeserve.v1 messages.
#ifndef MERGESERVE_GRPC_PROTO_CONVERT_H_
#define MERGESERVE_GRPC_PROTO_CONVERT_H_

#include "absl/status/statusor.h"
#include "mergeserve/auth/tenant_quotas.h"
#include "mergeserve/auth/token_store.h"
#include "mergeserve/jobs/job_manager.h"
#include "mergeserve/jobs/sweep_runner.h"
#include "mergeserve/jobs/task_evaluator.h"
#include "mergeserve/registry/checkpoint_registry.h"
#include "mergeserve/v1/admin.pb.h"
#include "mergeserve/v1/merge.pb.h"
#include "mergeserve/v1/registry.pb.h"

namespace mergeserve {

// Uploaded records do not show their server paths.
void ToProto(const CheckpointRecord& record, v1::Checkpoint* out);
// Validates the enum (UNSPECIFIED is an error naming the field).
absl::StatusOr<CheckpointRecord> FromProto(const v1::Checkpoint& proto);
absl::StatusOr<CheckpointRole> RoleFromProto(v1::CheckpointRole role);
v1::TensorDType ToProto(DType dtype);
void ToProto(const DatasetRecord& record, v1::Dataset* out);
absl::StatusOr<DatasetRecord> FromProto(const v1::Dataset& proto);
absl::StatusOr<DatasetRole> DatasetRoleFromProto(v1::DatasetRole role);
void ToProto(const TaskMetrics& m, v1::TaskMetrics* out);
void ToProto(const SweepPoint& p, v1::SweepPoint* out);
void ToProto(const SweepSummary& s, v1::SweepSummary* out);

void ToProto(const JobRecord& record, v1::MergeJob* out);
absl::StatusOr<JobState> JobStateFromProto(v1::JobState state);
// The merge a request describes, parsed once into the engine's config: the
// YAML form within `limits`, the structured form field by field.
absl::StatusOr<MergeConfig> SpecToConfig(const v1::MergeSpec& spec,
                                         const ConfigLimits& limits);
// A merge job's spec: config_yaml may hold several merges (named stages
// and the final one, as mergekit-multi reads them).
absl::StatusOr<MergeRequest> SpecToMergeRequest(std::string tenant,
                                                const v1::MergeSpec& spec,
                                                const ConfigLimits& limits);
// The method name of a MergeMethod value (MERGE_METHOD_TASK_ARITHMETIC ->
// "task_arithmetic"): the proto enum is the one list, no table to keep.
std::string MethodName(v1::MergeMethod method);
// A page request from a list call's page_size / page_token (size default
// 100, at most 1000).
PageRequest PageFromProto(int32_t page_size, const std::string& page_token);

void ToProto(const TokenRecord& t, v1::Token* out);
absl::StatusOr<Role> RoleFromProto(v1::Role role);
void ToProto(const Quota& q, v1::Quota* out);
QuotaOverride FromProto(const v1::Quota& q);
void ToProto(const MergeDiagnostics& d, v1::AnalyzeMergeResponse* out);

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_PROTO_CONVERT_H_
