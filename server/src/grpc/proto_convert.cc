#include "grpc/proto_convert.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "mergeserve/base/status_macros.h"

namespace mergeserve {

v1::TensorDType ToProto(DType dtype) {
  // The proto enum lists the dtypes in DType's order, starting at 1.
  return static_cast<v1::TensorDType>(static_cast<int>(dtype) + 1);
}

void ToProto(const CheckpointRecord& r, v1::Checkpoint* out) {
  out->set_name(r.name);
  out->set_tenant(r.tenant);
  out->set_uploaded(r.owned);
  out->set_published(r.published);
  out->set_role(static_cast<v1::CheckpointRole>(static_cast<int>(r.role)));
  out->set_base(r.base);
  if (!r.owned) out->set_path(r.path);
  for (const auto& [k, v] : r.labels) (*out->mutable_labels())[k] = v;
  out->set_content_digest(r.content_digest);
  out->set_size_bytes(r.size_bytes);
  out->set_tensor_count(r.tensor_count);
  out->set_parameter_count(r.parameter_count);
  out->mutable_create_time()->set_seconds(r.create_time_ms / 1000);
  out->mutable_create_time()->set_nanos(
      static_cast<int32_t>((r.create_time_ms % 1000) * 1000000));
  if (!r.owned) {
    out->set_program(r.program);
  } else if (!r.program.empty()) {
    out->set_program("program.pt");
  }
  out->set_task(r.task);
  out->set_program_digest(r.program_digest);
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
  r.program = p.program();
  r.task = p.task();
  return r;
}

void ToProto(const DatasetRecord& d, v1::Dataset* out) {
  out->set_name(d.name);
  out->set_tenant(d.tenant);
  out->set_uploaded(d.owned);
  out->set_task(d.task);
  out->set_role(static_cast<v1::DatasetRole>(static_cast<int>(d.role)));
  if (!d.owned) out->set_path(d.path);
  out->set_content_digest(d.content_digest);
  out->set_examples(d.examples);
  out->set_has_labels(d.has_labels);
  out->set_size_bytes(d.size_bytes);
  out->mutable_create_time()->set_seconds(d.create_time_ms / 1000);
}

absl::StatusOr<DatasetRole> DatasetRoleFromProto(v1::DatasetRole role) {
  if (role >= v1::DATASET_ROLE_EVAL && role <= v1::DATASET_ROLE_VALIDATION) {
    return static_cast<DatasetRole>(static_cast<int>(role));
  }
  return absl::InvalidArgumentError(
      "dataset.role must be EVAL, VALIDATION, FISHER or AUXILIARY");
}

absl::StatusOr<DatasetRecord> FromProto(const v1::Dataset& p) {
  DatasetRecord d;
  d.name = p.name();
  d.task = p.task();
  auto role = DatasetRoleFromProto(p.role());
  if (!role.ok()) return role.status();
  d.role = *role;
  d.path = p.path();
  return d;
}

void ToProto(const TaskMetrics& m, v1::TaskMetrics* out) {
  out->set_task(m.task);
  out->set_dataset(m.dataset);
  out->set_head(m.head);
  out->set_examples(m.examples);
  out->set_accuracy(m.accuracy);
  out->set_mean_cross_entropy(m.mean_cross_entropy);
}

void ToProto(const SweepPoint& p, v1::SweepPoint* out) {
  out->set_index(p.index);
  for (const auto& [name, v] : p.values) {
    if (name == "lambda") out->set_lambda(v);
    if (name == "density") out->set_density(v);
    (*out->mutable_values())[name] = v;
  }
  for (const TaskMetrics& m : p.tasks) ToProto(m, out->add_tasks());
  out->set_mean_accuracy(p.mean_accuracy);
  out->set_merge_seconds(p.merge_seconds);
  out->set_eval_seconds(p.eval_seconds);
}

void ToProto(const SweepSummary& s, v1::SweepSummary* out) {
  out->set_best_index(s.best_index);
  ToProto(s.best, out->mutable_best());
  out->set_seconds(s.seconds);
  out->set_trim_cache_hits(s.trim_cache_hits);
  out->set_trim_cache_misses(s.trim_cache_misses);
  out->set_stats_hits(s.stats_hits);
  out->set_stats_misses(s.stats_misses);
}

namespace {

void SetTime(int64_t ms, google::protobuf::Timestamp* t) {
  if (ms == 0) return;
  t->set_seconds(ms / 1000);
  t->set_nanos(static_cast<int32_t>((ms % 1000) * 1000000));
}

}  // namespace

void ToProto(const JobRecord& r, v1::MergeJob* out) {
  out->set_id(r.id);
  out->set_tenant(r.tenant);
  out->set_method(r.method);
  out->set_state(static_cast<v1::JobState>(static_cast<int>(r.state)));
  out->set_config_yaml(r.config_yaml);
  out->set_request_digest("sha256:" + r.request_digest);
  SetTime(r.create_ms, out->mutable_create_time());
  SetTime(r.start_ms, out->mutable_start_time());
  SetTime(r.end_ms, out->mutable_end_time());
  out->set_tensors_done(r.tensors_done);
  out->set_replica(r.replica);
  out->set_attempt(static_cast<int32_t>(r.attempt));
  out->set_kind(r.kind);
  out->set_tensors_total(r.tensors_total);
  out->set_error_code(r.error_code);
  out->set_error_message(r.error_message);
  for (const ResultFileInfo& f : r.files) {
    v1::ResultFile* p = out->add_files();
    p->set_name(f.name);
    p->set_size_bytes(f.size_bytes);
    p->set_sha256(f.sha256);
  }
  out->set_result_bytes(r.result_bytes);
  out->set_seconds(r.seconds);
  out->set_phase(r.phase);
  out->set_phase_done(r.phase_done);
  out->set_phase_total(r.phase_total);
  for (const auto& [k, v] : r.metrics) (*out->mutable_metrics())[k] = v;
}

namespace {

void ToProto(const TensorDiagnostics& t, v1::TensorDiagnostics* out) {
  out->set_name(t.name);
  out->set_numel(t.numel);
  for (double k : t.kept_fraction) out->add_kept_fraction(k);
  out->set_conflict_rate(t.conflict_rate);
  for (double n : t.tau_norm) out->add_tau_norm(n);
  out->set_merged_norm(t.merged_norm);
  for (const auto& row : t.cosine) {
    for (double c : row) out->add_cosine(c);
  }
  for (const auto& row : t.subspace_overlap) {
    for (double c : row) out->add_subspace_overlap(c);
  }
  out->set_subspace_rank(t.subspace_rank);
}

}  // namespace

void ToProto(const MergeDiagnostics& d, v1::AnalyzeMergeResponse* out) {
  out->set_method(d.method);
  for (const auto& e : d.experts) out->add_experts(e);
  for (const auto& t : d.tensors) ToProto(t, out->add_tensors());
  ToProto(d.overall, out->mutable_overall());
  for (const auto& l : d.layers) {
    v1::LayerDiagnostics* layer = out->add_layers();
    layer->set_layer(l.layer);
    layer->set_conflict_rate(l.conflict_rate);
    layer->set_subspace_overlap(l.subspace_overlap);
    layer->set_matrices(l.matrices);
  }
}

absl::StatusOr<JobState> JobStateFromProto(v1::JobState state) {
  if (state < v1::JOB_STATE_QUEUED || state > v1::JOB_STATE_CANCELLED) {
    return absl::InvalidArgumentError("unknown job state");
  }
  return static_cast<JobState>(static_cast<int>(state));
}

std::string MethodName(v1::MergeMethod method) {
  std::string name = v1::MergeMethod_Name(method);
  const std::string prefix = "MERGE_METHOD_";
  if (name.rfind(prefix, 0) == 0) name = name.substr(prefix.size());
  return absl::AsciiStrToLower(name);
}

PageRequest PageFromProto(int32_t page_size, const std::string& page_token) {
  return {ClampPageSize(page_size, 100, 1000), page_token};
}

namespace {

void SetIf(bool has, double v, const char* key, ParamMap* params) {
  if (has) (*params)[key] = ParamValue::Number(v);
}

}  // namespace

absl::StatusOr<MergeRequest> SpecToMergeRequest(std::string tenant,
                                                const v1::MergeSpec& spec,
                                                const ConfigLimits& limits) {
  if (spec.spec_case() == v1::MergeSpec::kConfigYaml &&
      !spec.config_yaml().empty()) {
    return MergeRequestFromYaml(std::move(tenant), spec.config_yaml(), "",
                                limits);
  }
  MS_ASSIGN_OR_RETURN(MergeConfig config, SpecToConfig(spec, limits));
  MergeRequest r;
  r.tenant = std::move(tenant);
  r.config = std::move(config);
  return r;
}

absl::StatusOr<MergeConfig> SpecToConfig(const v1::MergeSpec& spec,
                                         const ConfigLimits& limits) {
  if (spec.spec_case() == v1::MergeSpec::kConfigYaml) {
    if (spec.config_yaml().empty()) {
      return absl::InvalidArgumentError("spec.config_yaml is empty");
    }
    return MergeConfig::FromYaml(spec.config_yaml(), "", limits);
  }
  if (spec.spec_case() != v1::MergeSpec::kStructured) {
    return absl::InvalidArgumentError(
        "spec needs either structured or config_yaml");
  }
  const v1::StructuredMerge& m = spec.structured();
  if (m.method() == v1::MERGE_METHOD_UNSPECIFIED ||
      !v1::MergeMethod_IsValid(m.method())) {
    return absl::InvalidArgumentError("spec.structured.method is required");
  }
  if (m.models_size() == 0) {
    return absl::InvalidArgumentError("spec.structured.models is empty");
  }
  if (static_cast<size_t>(m.models_size()) > limits.max_models) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: models lists ", m.models_size(),
                     " entries; at most ", limits.max_models, " are allowed"));
  }
  MergeConfig c;
  c.merge_method = MethodName(m.method());
  if (!m.base_model().empty()) c.base_model = m.base_model();
  for (const v1::ModelSpec& ms : m.models()) {
    ModelEntry e;
    e.model = ms.checkpoint();
    SetIf(ms.has_weight(), ms.weight(), "weight", &e.parameters);
    SetIf(ms.has_density(), ms.density(), "density", &e.parameters);
    SetIf(ms.has_gamma(), ms.gamma(), "gamma", &e.parameters);
    SetIf(ms.has_epsilon(), ms.epsilon(), "epsilon", &e.parameters);
    if (!ms.fisher().empty()) {
      e.parameters["fisher"] = ParamValue::String(ms.fisher());
    }
    if (!ms.gram().empty())
      e.parameters["gram"] = ParamValue::String(ms.gram());
    c.models.push_back(std::move(e));
  }
  SetIf(m.has_lambda(), m.lambda(), "lambda", &c.parameters);
  SetIf(m.has_t(), m.t(), "t", &c.parameters);
  if (m.has_normalize())
    c.parameters["normalize"] = ParamValue::Bool(m.normalize());
  if (m.has_seed()) {
    c.parameters["seed"] = ParamValue::Number(static_cast<double>(m.seed()));
  }
  switch (m.semantics()) {
    case v1::SEMANTICS_MERGEKIT:
      c.parameters["semantics"] = ParamValue::String("mergekit");
      break;
    case v1::SEMANTICS_PAPER:
      c.parameters["semantics"] = ParamValue::String("paper");
      break;
    case v1::SEMANTICS_PEFT:
      c.parameters["semantics"] = ParamValue::String("peft");
      break;
    default:
      break;
  }
  switch (m.trim_scope()) {
    case v1::TRIM_SCOPE_TENSOR:
      c.parameters["trim_scope"] = ParamValue::String("tensor");
      break;
    case v1::TRIM_SCOPE_MODEL:
      c.parameters["trim_scope"] = ParamValue::String("model");
      break;
    default:
      break;
  }
  switch (m.out_dtype()) {
    case v1::OUTPUT_DTYPE_BFLOAT16:
      c.out_dtype = DType::kBF16;
      break;
    case v1::OUTPUT_DTYPE_FLOAT16:
      c.out_dtype = DType::kF16;
      break;
    case v1::OUTPUT_DTYPE_FLOAT32:
      c.out_dtype = DType::kF32;
      break;
    default:
      break;
  }
  return c;
}

void ToProto(const TokenRecord& t, v1::Token* out) {
  out->set_id(t.id);
  out->set_tenant(t.tenant);
  out->set_role(static_cast<v1::Role>(static_cast<int>(t.role)));
  out->set_description(t.description);
  SetTime(t.create_ms, out->mutable_create_time());
  if (t.expire_ms != 0) SetTime(t.expire_ms, out->mutable_expire_time());
  if (t.revoke_ms != 0) SetTime(t.revoke_ms, out->mutable_revoke_time());
}

absl::StatusOr<Role> RoleFromProto(v1::Role role) {
  switch (role) {
    case v1::ROLE_READER:
      return Role::kReader;
    case v1::ROLE_WRITER:
      return Role::kWriter;
    case v1::ROLE_ADMIN:
      return Role::kAdmin;
    default:
      return absl::InvalidArgumentError("role must be READER, WRITER or ADMIN");
  }
}

void ToProto(const Quota& q, v1::Quota* out) {
  out->set_max_jobs(q.max_jobs);
  out->set_max_stored_bytes(q.max_stored_bytes);
  out->set_max_upload_bytes(q.max_upload_bytes);
  out->set_max_streams(q.max_streams);
}

QuotaOverride FromProto(const v1::Quota& q) {
  QuotaOverride o;
  if (q.has_max_jobs()) o.max_jobs = q.max_jobs();
  if (q.has_max_stored_bytes()) o.max_stored_bytes = q.max_stored_bytes();
  if (q.has_max_upload_bytes()) o.max_upload_bytes = q.max_upload_bytes();
  if (q.has_max_streams()) o.max_streams = q.max_streams();
  return o;
}

}  // namespace mergeserve
