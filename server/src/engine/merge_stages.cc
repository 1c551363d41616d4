#include "mergeserve/engine/merge_stages.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/engine/method_registry.h"

namespace mergeserve {
namespace fs = std::filesystem;
namespace {

// The model part of a reference ("stage+lora" -> "stage").
std::string ModelPart(const std::string& ref) {
  return ref.substr(0, ref.find('+'));
}

// Stage names to their folders first, then the caller's resolver.
ModelResolver StageResolver(const std::map<std::string, std::string>* folders,
                            const StageSetup& setup) {
  return [folders, inner = setup.resolver, check_for = setup.check_for](
             const std::string& ref) -> absl::StatusOr<ModelLocation> {
    auto it = folders->find(ref);
    if (it != folders->end()) {
      return ModelLocation(it->second,
                           check_for ? check_for(it->second) : nullptr);
    }
    if (!inner) return ModelLocation(ref);
    return inner(ref);
  };
}

absl::Status InStage(const MergeConfig& c, const absl::Status& s) {
  if (s.ok() || !c.name) return s;
  return absl::Status(s.code(),
                      absl::StrCat("merge '", *c.name, "': ", s.message()));
}

// A stage's folder, by its place (a name is the user's text, never a path).
std::string StageFolder(const std::string& root, size_t index) {
  return (fs::path(root) / absl::StrCat("stage-", index)).string();
}

struct RemoveOnExit {
  std::string dir;
  ~RemoveOnExit() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

}  // namespace

std::string StagedMerge::ToYaml() const {
  std::string out;
  for (const MergeConfig& s : stages)
    absl::StrAppend(&out, s.ToYaml(), "---\n");
  return out + final.ToYaml();
}

bool StagedMerge::IsStage(const std::string& ref) const {
  const std::string part = ModelPart(ref);
  return std::any_of(stages.begin(), stages.end(),
                     [&](const MergeConfig& s) { return *s.name == part; });
}

absl::StatusOr<StagedMerge> OrderStages(std::vector<MergeConfig> documents) {
  std::map<std::string, size_t> by_name;
  int finals = 0;
  for (size_t i = 0; i < documents.size(); ++i) {
    if (!documents[i].name) {
      ++finals;
      continue;
    }
    if (documents[i].name->find('+') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config: merge name '", *documents[i].name,
          "' holds '+', which joins a model and its LoRA in references"));
    }
    if (!by_name.emplace(*documents[i].name, i).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config: two merges are named '", *documents[i].name, "'"));
    }
  }
  if (finals != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config: a file of several merges needs exactly one without a name "
        "(the final merge, written to the output); this one has ",
        finals));
  }
  // Depth-first: each document after the stages it references.
  StagedMerge out;
  std::vector<int> state(documents.size(), 0);  // 1 visiting, 2 done
  std::function<absl::Status(size_t)> visit = [&](size_t i) -> absl::Status {
    if (state[i] == 2) return absl::OkStatus();
    if (state[i] == 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("config: the merges use each other in a cycle through '",
                       *documents[i].name, "'"));
    }
    state[i] = 1;
    for (const std::string& ref : documents[i].References()) {
      auto it = by_name.find(ref);
      if (it != by_name.end()) MS_RETURN_IF_ERROR(visit(it->second));
    }
    state[i] = 2;
    if (documents[i].name) {
      out.stages.push_back(documents[i]);
    } else {
      out.final = documents[i];
    }
    return absl::OkStatus();
  };
  for (size_t i = 0; i < documents.size(); ++i) {
    if (!documents[i].name) MS_RETURN_IF_ERROR(visit(i));
  }
  return out;  // stages no merge uses are not run
}

absl::StatusOr<StagedMerge> ParseStagedMerge(const std::string& text,
                                             const std::string& source_dir,
                                             const ConfigLimits& limits) {
  MS_ASSIGN_OR_RETURN(std::vector<MergeConfig> documents,
                      MergeConfig::AllFromYaml(text, source_dir, limits));
  if (documents.size() == 1 && !documents[0].name) {
    StagedMerge one;
    one.final = std::move(documents[0]);
    one.final.source_text = text;
    return one;
  }
  return OrderStages(std::move(documents));
}

absl::StatusOr<StagesCheck> CheckStages(const StagedMerge& merge,
                                        const StageSetup& setup,
                                        Backend backend, int threads) {
  StagesCheck check;
  std::map<std::string, std::string> sketches;
  const std::string root = (fs::path(setup.scratch_dir) / "sketch").string();
  RemoveOnExit cleanup{merge.stages.empty() ? std::string()
                                            : setup.scratch_dir};
  const ModelResolver resolver = StageResolver(&sketches, setup);
  auto plan_one =
      [&](const MergeConfig& c) -> absl::StatusOr<std::unique_ptr<MergePlan>> {
    MS_RETURN_IF_ERROR(InStage(c, CreateMethod(c.merge_method).status()));
    auto plan = MergePlan::Create(c, resolver);
    if (!plan.ok()) return InStage(c, plan.status());
    check.memory =
        std::max(check.memory, EstimateMergeMemory(**plan, backend, threads));
    check.tensors_total += static_cast<int64_t>((*plan)->tensors().size());
    return plan;
  };
  for (size_t i = 0; i < merge.stages.size(); ++i) {
    const MergeConfig& stage = merge.stages[i];
    MS_ASSIGN_OR_RETURN(std::unique_ptr<MergePlan> plan, plan_one(stage));
    for (const PlannedTensor& t : plan->tensors()) {
      check.scratch_bytes += static_cast<int64_t>(t.out_bytes());
    }
    const std::string dir = StageFolder(root, i);
    MS_RETURN_IF_ERROR(InStage(stage, WritePlanSketch(*plan, dir)));
    sketches[*stage.name] = dir;
  }
  MS_ASSIGN_OR_RETURN(std::unique_ptr<MergePlan> final_plan,
                      plan_one(merge.final));
  for (const PlannedTensor& t : final_plan->tensors()) {
    check.output_bytes += static_cast<int64_t>(t.out_bytes());
  }
  if (merge.stages.empty()) check.final_plan = std::move(final_plan);
  return check;
}

absl::StatusOr<MergeSummary> RunMergeStages(
    const StagedMerge& merge, const MergeOptions& options,
    const StageSetup& setup,
    const std::function<void(const std::string&)>& on_stage) {
  RemoveOnExit cleanup{merge.stages.empty() ? std::string()
                                            : setup.scratch_dir};
  std::map<std::string, std::string> outputs;  // stage -> folder
  const ModelResolver resolver = StageResolver(&outputs, setup);
  // A stage's output has no registered digest: nothing about it is cached.
  auto digest = [&merge, inner = options.digest](const std::string& ref) {
    return merge.IsStage(ref) || !inner ? std::string() : inner(ref);
  };
  for (size_t i = 0; i < merge.stages.size(); ++i) {
    const MergeConfig& stage = merge.stages[i];
    if (on_stage) on_stage(*stage.name);
    MergeOptions o = options;
    o.output_dir = StageFolder(setup.scratch_dir, i);
    o.overwrite = true;
    o.config_text.clear();
    o.before_commit = nullptr;
    o.digest_outputs = false;   // scratch folders are never recorded
    o.uncache_outputs = false;  // and are read by the next stage at once
    o.durable = false;          // a crash restarts the whole merge
    o.diagnostics = nullptr;
    o.resolver = resolver;
    o.digest = digest;
    if (options.on_progress) {
      o.on_progress = [&options, &stage](const MergeProgress& p) {
        MergeProgress q = p;
        q.stage = *stage.name;
        options.on_progress(q);
      };
    }
    auto s = RunMerge(stage, o);
    if (!s.ok()) return InStage(stage, s.status());
    outputs[*stage.name] = o.output_dir;
  }
  MergeOptions o = options;
  o.resolver = resolver;
  o.digest = digest;
  // The saved config is the whole request, stages included.
  if (o.config_text.empty() && !merge.stages.empty()) {
    o.config_text = merge.ToYaml();
  }
  return RunMerge(merge.final, o);
}

}  // namespace mergeserve
