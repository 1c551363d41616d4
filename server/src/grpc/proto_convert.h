// Conversions between registry records and their mergeserve.v1 messages.
#ifndef MERGESERVE_GRPC_PROTO_CONVERT_H_
#define MERGESERVE_GRPC_PROTO_CONVERT_H_

#include "absl/status/statusor.h"
#include "mergeserve/jobs/job_manager.h"
#include "mergeserve/jobs/sweep_runner.h"
#include "mergeserve/jobs/task_evaluator.h"
#include "mergeserve/registry/checkpoint_registry.h"
#include "mergeserve/v1/merge.pb.h"
#include "mergeserve/v1/registry.pb.h"

namespace mergeserve {

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
// The merge a request describes, as the engine's YAML vocabulary
// (structured requests are converted; YAML is passed through).
absl::StatusOr<std::string> SpecToYaml(const v1::MergeSpec& spec);
void ToProto(const MergeDiagnostics& d, v1::AnalyzeMergeResponse* out);

}  // namespace mergeserve

#endif  // MERGESERVE_GRPC_PROTO_CONVERT_H_
