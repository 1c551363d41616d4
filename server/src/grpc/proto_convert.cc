#include "grpc/proto_convert.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

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
  out->set_program(r.program);
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
  out->set_task(d.task);
  out->set_role(static_cast<v1::DatasetRole>(static_cast<int>(d.role)));
  out->set_path(d.path);
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

// YAML double-quoted scalar.
std::string Quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out + "\"";
}

std::string Num(double v) { return absl::StrCat(v); }

}  // namespace

void ToProto(const JobRecord& r, v1::MergeJob* out) {
  out->set_id(r.id);
  out->set_state(static_cast<v1::JobState>(static_cast<int>(r.state)));
  out->set_config_yaml(r.config_yaml);
  out->set_request_digest("sha256:" + r.request_digest);
  SetTime(r.create_ms, out->mutable_create_time());
  SetTime(r.start_ms, out->mutable_start_time());
  SetTime(r.end_ms, out->mutable_end_time());
  out->set_tensors_done(r.tensors_done);
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
}

}  // namespace

void ToProto(const MergeDiagnostics& d, v1::AnalyzeMergeResponse* out) {
  out->set_method(d.method);
  for (const auto& e : d.experts) out->add_experts(e);
  for (const auto& t : d.tensors) ToProto(t, out->add_tensors());
  ToProto(d.overall, out->mutable_overall());
}

absl::StatusOr<JobState> JobStateFromProto(v1::JobState state) {
  if (state < v1::JOB_STATE_QUEUED || state > v1::JOB_STATE_CANCELLED) {
    return absl::InvalidArgumentError("unknown job state");
  }
  return static_cast<JobState>(static_cast<int>(state));
}

absl::StatusOr<std::string> SpecToYaml(const v1::MergeSpec& spec) {
  if (spec.spec_case() == v1::MergeSpec::kConfigYaml) {
    if (spec.config_yaml().empty()) {
      return absl::InvalidArgumentError("spec.config_yaml is empty");
    }
    return spec.config_yaml();
  }
  if (spec.spec_case() != v1::MergeSpec::kStructured) {
    return absl::InvalidArgumentError(
        "spec needs either structured or config_yaml");
  }
  const v1::StructuredMerge& m = spec.structured();
  static const char* kMethods[] = {
      "",          "linear",      "task_arithmetic",  "ties",    "dare_linear",
      "dare_ties", "breadcrumbs", "breadcrumbs_ties", "della",   "della_linear",
      "slerp",     "model_stock", "fisher",           "regmean", "ri"};
  if (m.method() <= v1::MERGE_METHOD_UNSPECIFIED ||
      m.method() > v1::MERGE_METHOD_RI) {
    return absl::InvalidArgumentError("spec.structured.method is required");
  }
  if (m.models_size() == 0) {
    return absl::InvalidArgumentError("spec.structured.models is empty");
  }
  std::string y = absl::StrCat("merge_method: ", kMethods[m.method()], "\n");
  if (!m.base_model().empty()) {
    absl::StrAppend(&y, "base_model: ", Quote(m.base_model()), "\n");
  }
  absl::StrAppend(&y, "models:\n");
  for (const v1::ModelSpec& ms : m.models()) {
    absl::StrAppend(&y, "  - model: ", Quote(ms.checkpoint()), "\n");
    std::vector<std::string> params;
    if (ms.has_weight()) params.push_back("weight: " + Num(ms.weight()));
    if (ms.has_density()) params.push_back("density: " + Num(ms.density()));
    if (ms.has_gamma()) params.push_back("gamma: " + Num(ms.gamma()));
    if (ms.has_epsilon()) params.push_back("epsilon: " + Num(ms.epsilon()));
    if (!ms.fisher().empty()) params.push_back("fisher: " + Quote(ms.fisher()));
    if (!ms.gram().empty()) params.push_back("gram: " + Quote(ms.gram()));
    if (!params.empty()) {
      absl::StrAppend(&y, "    parameters: {", absl::StrJoin(params, ", "),
                      "}\n");
    }
  }
  std::vector<std::string> global;
  if (m.has_lambda()) global.push_back("lambda: " + Num(m.lambda()));
  if (m.has_normalize())
    global.push_back(m.normalize() ? "normalize: true" : "normalize: false");
  if (m.has_t()) global.push_back("t: " + Num(m.t()));
  if (m.has_seed()) global.push_back(absl::StrCat("seed: ", m.seed()));
  switch (m.semantics()) {
    case v1::SEMANTICS_MERGEKIT:
      global.push_back("semantics: mergekit");
      break;
    case v1::SEMANTICS_PAPER:
      global.push_back("semantics: paper");
      break;
    case v1::SEMANTICS_PEFT:
      global.push_back("semantics: peft");
      break;
    default:
      break;
  }
  switch (m.trim_scope()) {
    case v1::TRIM_SCOPE_TENSOR:
      global.push_back("trim_scope: tensor");
      break;
    case v1::TRIM_SCOPE_MODEL:
      global.push_back("trim_scope: model");
      break;
    default:
      break;
  }
  if (!global.empty()) {
    absl::StrAppend(&y, "parameters: {", absl::StrJoin(global, ", "), "}\n");
  }
  switch (m.out_dtype()) {
    case v1::OUTPUT_DTYPE_BFLOAT16:
      absl::StrAppend(&y, "out_dtype: bfloat16\n");
      break;
    case v1::OUTPUT_DTYPE_FLOAT16:
      absl::StrAppend(&y, "out_dtype: float16\n");
      break;
    case v1::OUTPUT_DTYPE_FLOAT32:
      absl::StrAppend(&y, "out_dtype: float32\n");
      break;
    default:
      break;
  }
  return y;
}

}  // namespace mergeserve
