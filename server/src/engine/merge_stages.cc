#include "mergeserve/engine/merge_stages.h"

#include <filesystem>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "mergeserve/base/status_macros.h"

namespace mergeserve {
namespace fs = std::filesystem;
namespace {

// The model part of a reference ("stage+lora" -> "stage").
std::string ModelPart(const std::string& ref) {
  return ref.substr(0, ref.find('+'));
}

// Every model reference of a document.
std::vector<std::string*> Refs(MergeConfig& c) {
  std::vector<std::string*> refs;
  if (c.base_model) refs.push_back(&*c.base_model);
  for (ModelEntry& m : c.models) refs.push_back(&m.model);
  for (SliceSpec& s : c.slices) {
    for (SliceSource& src : s.sources) refs.push_back(&src.model);
  }
  return refs;
}

}  // namespace

absl::StatusOr<std::vector<MergeConfig>> OrderStages(
    std::vector<MergeConfig> documents) {
  std::map<std::string, size_t> by_name;
  int finals = 0;
  for (size_t i = 0; i < documents.size(); ++i) {
    if (!documents[i].name) {
      ++finals;
      continue;
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
  std::vector<MergeConfig> out;
  std::vector<int> state(documents.size(), 0);  // 1 visiting, 2 done
  std::function<absl::Status(size_t)> visit = [&](size_t i) -> absl::Status {
    if (state[i] == 2) return absl::OkStatus();
    if (state[i] == 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("config: the merges use each other in a cycle through '",
                       *documents[i].name, "'"));
    }
    state[i] = 1;
    for (std::string* ref : Refs(documents[i])) {
      auto it = by_name.find(ModelPart(*ref));
      if (it != by_name.end()) MS_RETURN_IF_ERROR(visit(it->second));
    }
    state[i] = 2;
    out.push_back(documents[i]);
    return absl::OkStatus();
  };
  for (size_t i = 0; i < documents.size(); ++i) {
    if (!documents[i].name) MS_RETURN_IF_ERROR(visit(i));
  }
  return out;  // stages no merge uses are not run
}

absl::StatusOr<MergeSummary> RunMergeStages(
    std::vector<MergeConfig> ordered, const MergeOptions& options,
    const std::string& scratch_dir,
    const std::function<void(const std::string&)>& on_stage) {
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{scratch_dir};
  std::map<std::string, std::string> outputs;  // stage -> folder
  for (size_t i = 0; i + 1 < ordered.size(); ++i) {
    MergeConfig& stage = ordered[i];
    for (std::string* ref : Refs(stage)) {
      auto it = outputs.find(ModelPart(*ref));
      if (it != outputs.end()) {
        *ref = it->second + ref->substr(ModelPart(*ref).size());
      }
    }
    if (on_stage) on_stage(*stage.name);
    MergeOptions o = options;
    o.output_dir = (fs::path(scratch_dir) / *stage.name).string();
    o.overwrite = true;
    o.config_text.clear();
    o.on_progress = nullptr;
    auto s = RunMerge(stage, o);
    if (!s.ok()) {
      return absl::Status(
          s.status().code(),
          absl::StrCat("merge '", *stage.name, "': ", s.status().message()));
    }
    outputs[*stage.name] = o.output_dir;
  }
  MergeConfig& final = ordered.back();
  MergeOptions o = options;
  // The saved config is the final merge as written, not its scratch paths.
  if (o.config_text.empty()) o.config_text = final.ToYaml();
  for (std::string* ref : Refs(final)) {
    auto it = outputs.find(ModelPart(*ref));
    if (it != outputs.end()) {
      *ref = it->second + ref->substr(ModelPart(*ref).size());
    }
  }
  return RunMerge(final, o);
}

}  // namespace mergeserve
