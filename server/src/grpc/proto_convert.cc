#include "grpc/proto_convert.h"

#include "absl/strings/str_cat.h"

namespace mergeserve {

v1::TensorDType ToProto(DType dtype) {
  // The proto enum lists the dtypes in DType's order, starting at 1.
  return static_cast<v1::TensorDType>(static_cast<int>(dtype) + 1);
}

void ToProto(const CheckpointRecord& r, v1::Checkpoint* out) {
  out->set_name(r.name);
  out->set_role(static_cast<v1::CheckpointRole>(static_cast<int>(r.role)));
  out->set_base(r.base);
  out->set_path(r.path);
  for (const auto& [k, v] : r.labels) (*out->mutable_labels())[k] = v;
  out->set_content_digest(r.content_digest);
  out->set_size_bytes(r.size_bytes);
  out->set_tensor_count(r.tensor_count);
  out->set_parameter_count(r.parameter_count);
  out->mutable_create_time()->set_seconds(r.create_time_ms / 1000);
  out->mutable_create_time()->set_nanos(
      static_cast<int32_t>((r.create_time_ms % 1000) * 1000000));
  for (const TensorMeta& t : r.tensors) {
    v1::TensorMetadata* m = out->add_tensors();
    m->set_name(t.name);
    m->set_dtype(ToProto(t.dtype));
    for (int64_t d : t.shape) m->add_shape(d);
  }
}

absl::StatusOr<CheckpointRole> RoleFromProto(v1::CheckpointRole role) {
  switch (role) {
    case v1::CHECKPOINT_ROLE_BASE:
      return CheckpointRole::kBase;
    case v1::CHECKPOINT_ROLE_EXPERT:
      return CheckpointRole::kExpert;
    case v1::CHECKPOINT_ROLE_AUXILIARY:
      return CheckpointRole::kAuxiliary;
    default:
      return absl::InvalidArgumentError(
          "checkpoint.role must be BASE, EXPERT or AUXILIARY");
  }
}

absl::StatusOr<CheckpointRecord> FromProto(const v1::Checkpoint& p) {
  CheckpointRecord r;
  r.name = p.name();
  auto role = RoleFromProto(p.role());
  if (!role.ok()) return role.status();
  r.role = *role;
  r.base = p.base();
  r.path = p.path();
  for (const auto& [k, v] : p.labels()) r.labels[k] = v;
  return r;
}

}  // namespace mergeserve
