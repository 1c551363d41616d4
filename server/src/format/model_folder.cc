#include "mergeserve/format/model_folder.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <random>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "mergeserve/base/errors.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/format/torch_checkpoint.h"
#include "nlohmann/json.hpp"

namespace mergeserve {
namespace fs = std::filesystem;
namespace {

// Reads a small file through one descriptor whose real path `check` vets.
absl::StatusOr<std::string> ReadChecked(const std::string& path,
                                        const FileCheck& check,
                                        size_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("cannot open ", path));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  if (check) MS_RETURN_IF_ERROR(check(RealPathOfFd(fd, path)));
  std::string out;
  char buf[65536];
  for (;;) {
    const ssize_t r = ::read(fd, buf, sizeof buf);
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("cannot read ", path));
    }
    if (r == 0) break;
    out.append(buf, static_cast<size_t>(r));
    if (out.size() > max_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, " is larger than ", max_bytes, " bytes"));
    }
  }
  return out;
}

}  // namespace

const std::vector<std::string>& ModelSideFiles() {
  static const auto* kFiles =
      new std::vector<std::string>{"config.json",
                                   "generation_config.json",
                                   "tokenizer.json",
                                   "tokenizer_config.json",
                                   "special_tokens_map.json",
                                   "tokenizer.model",
                                   "vocab.json",
                                   "merges.txt",
                                   "added_tokens.json",
                                   "vocab.txt",
                                   "chat_template.jinja"};
  return *kFiles;
}

bool IsModelFile(const std::string& n) {
  if (n.empty() || n.find('/') != std::string::npos || n[0] == '.')
    return false;
  if (absl::EndsWith(n, ".safetensors") ||
      n == "model.safetensors.index.json" || n == "adapter_config.json") {
    return true;
  }
  // PyTorch checkpoints: read without running their pickles (see
  // torch_checkpoint.h).
  if (n == "pytorch_model.bin" || n == "pytorch_model.bin.index.json" ||
      (absl::StartsWith(n, "pytorch_model-") && absl::EndsWith(n, ".bin"))) {
    return true;
  }
  const auto& side = ModelSideFiles();
  return std::find(side.begin(), side.end(), n) != side.end();
}

bool JsonNestingWithin(std::string_view text, int max_depth) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}

ModelFolder::~ModelFolder() {
  shards_.clear();
  if (!converted_dir_.empty()) {
    std::error_code ec;
    fs::remove_all(converted_dir_, ec);
  }
}

absl::Status ModelFolder::ConvertTorchFiles(const std::string& dir) {
  // mergekit's order: safetensors first (handled above), then the .bin
  // index, then a single .bin (ShardedTensorIndex.from_disk).
  std::vector<std::string> files;
  const fs::path index = fs::path(dir) / "pytorch_model.bin.index.json";
  std::error_code ec;
  if (fs::exists(index, ec)) {
    MS_ASSIGN_OR_RETURN(std::string text,
                        ReadChecked(index.string(), check_, 64 << 20));
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") ||
        !j["weight_map"].is_object()) {
      return absl::DataLossError(absl::StrCat(
          "invalid index ", index.string(), ": expected a weight_map object"));
    }
    std::set<std::string> names;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      const std::string f =
          it.value().is_string() ? it.value().get<std::string>() : "";
      if (f.empty() || f.find('/') != std::string::npos || f == "..") {
        return absl::DataLossError(
            absl::StrCat("invalid index ", index.string(), ": entry '",
                         it.key(), "' is not a plain file name"));
      }
      names.insert(f);
    }
    for (const std::string& f : names)
      files.push_back((fs::path(dir) / f).string());
  } else {
    files.push_back((fs::path(dir) / "pytorch_model.bin").string());
  }
  for (const std::string& f : files) {
    const std::string real = fs::canonical(f, ec).string();
    if (ec) return absl::NotFoundError(absl::StrCat("cannot open ", f));
    if (check_) MS_RETURN_IF_ERROR(check_(real));
  }
  // Converted once, into a private folder removed with this object.
  std::random_device rd;
  converted_dir_ =
      (fs::temp_directory_path(ec) /
       absl::StrFormat("mergeserve-bin-%d-%08x%08x", getpid(), rd(), rd()))
          .string();
  MS_RETURN_IF_ERROR(ConvertTorchCheckpoint(files, converted_dir_));
  auto reader = SafetensorsReader::Open(converted_dir_ + "/model.safetensors");
  if (!reader.ok()) return reader.status();
  for (const TensorInfo& t : (*reader)->tensors()) {
    index_.emplace(t.name, std::make_pair(shards_.size(), &t));
  }
  shards_.push_back(*std::move(reader));
  return absl::OkStatus();
}

absl::Status ModelFolder::AddShard(const std::string& file) {
  MS_ASSIGN_OR_RETURN(auto reader, SafetensorsReader::Open(file));
  if (check_) MS_RETURN_IF_ERROR(check_(reader->file().real_path()));
  const size_t shard = shards_.size();
  for (const TensorInfo& t : reader->tensors()) {
    auto [it, inserted] = index_.emplace(t.name, std::make_pair(shard, &t));
    if (!inserted) {
      return absl::DataLossError(
          absl::StrCat("tensor '", t.name, "' appears in both ",
                       shards_[it->second.first]->path(), " and ", file));
    }
  }
  shards_.push_back(std::move(reader));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ModelFolder>> ModelFolder::Open(
    const std::string& path, FileCheck check) {
  std::unique_ptr<ModelFolder> m(new ModelFolder());
  m->path_ = path;
  m->check_ = std::move(check);
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat("model path not found: ", path));
  }
  if (fs::is_regular_file(path, ec)) {
    MS_RETURN_IF_ERROR(m->AddShard(path));
  } else if (fs::is_directory(path, ec)) {
    const fs::path dir(path);
    const fs::path index = dir / "model.safetensors.index.json";
    const fs::path single = dir / "model.safetensors";
    if (fs::exists(index, ec)) {
      MS_ASSIGN_OR_RETURN(std::string text,
                          ReadChecked(index.string(), m->check_, 64 << 20));
      auto j = nlohmann::json::parse(text, nullptr, false);
      if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") ||
          !j["weight_map"].is_object()) {
        return absl::DataLossError(
            absl::StrCat("invalid index ", index.string(),
                         ": expected a weight_map object"));
      }
      std::set<std::string> files;
      for (auto it = j["weight_map"].begin(); it != j["weight_map"].end();
           ++it) {
        if (!it.value().is_string()) {
          return absl::DataLossError(absl::StrCat("invalid index ",
                                                  index.string(), ": entry '",
                                                  it.key(), "' is not a file"));
        }
        const std::string f = it.value().get<std::string>();
        if (f.find('/') != std::string::npos || f == ".." || f.empty()) {
          return absl::DataLossError(
              absl::StrCat("invalid index ", index.string(), ": shard name '",
                           f, "' must be a plain file name"));
        }
        files.insert(f);
      }
      for (const auto& f : files)
        MS_RETURN_IF_ERROR(m->AddShard((dir / f).string()));
      // Every tensor the index names must be in the shard it names.
      for (auto it = j["weight_map"].begin(); it != j["weight_map"].end();
           ++it) {
        auto found = m->index_.find(it.key());
        if (found == m->index_.end() ||
            fs::path(m->shards_[found->second.first]->path()).filename() !=
                it.value().get<std::string>()) {
          return absl::DataLossError(
              absl::StrCat("index ", index.string(), " lists tensor '",
                           it.key(), "' in ", it.value().get<std::string>(),
                           " but that shard does not hold it"));
        }
      }
    } else if (fs::exists(single, ec)) {
      MS_RETURN_IF_ERROR(m->AddShard(single.string()));
    } else if (fs::exists(dir / "pytorch_model.bin.index.json", ec) ||
               fs::exists(dir / "pytorch_model.bin", ec)) {
      MS_RETURN_IF_ERROR(m->ConvertTorchFiles(dir.string()));
    } else {
      std::vector<std::string> candidates;
      for (const auto& e : fs::directory_iterator(dir, ec)) {
        if (e.is_regular_file() &&
            absl::EndsWith(e.path().filename().string(), ".safetensors")) {
          candidates.push_back(e.path().string());
        }
      }
      if (candidates.size() != 1) {
        return absl::NotFoundError(absl::StrCat(
            "no model.safetensors, model.safetensors.index.json or "
            "pytorch_model.bin in ",
            path,
            candidates.empty() ? "" : " (and more than one *.safetensors)"));
      }
      MS_RETURN_IF_ERROR(m->AddShard(candidates[0]));
    }
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is neither a folder nor a file"));
  }
  for (const auto& [name, entry] : m->index_)
    m->tensors_.push_back(entry.second);
  return m;
}

const TensorInfo* ModelFolder::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second.second;
}

TensorView ModelFolder::View(const TensorInfo& info) const {
  auto it = index_.find(info.name);
  return shards_[it->second.first]->View(info);
}

absl::Status ModelFolder::CheckUnchanged() const {
  for (const auto& s : shards_) MS_RETURN_IF_ERROR(s->file().CheckUnchanged());
  return absl::OkStatus();
}

absl::StatusOr<std::string> ModelFolder::ReadSideFile(const std::string& name,
                                                      size_t max_bytes) const {
  std::error_code ec;
  const fs::path dir(path_);
  if (!IsModelFile(name) || !fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("no side file ", name));
  }
  if (!fs::exists(dir / name, ec)) {
    return absl::NotFoundError(
        absl::StrCat("no side file ", name, " in ", path_));
  }
  MS_ASSIGN_OR_RETURN(std::string text,
                      ReadChecked((dir / name).string(), check_, max_bytes));
  if (absl::EndsWith(name, ".json") && !JsonNestingWithin(text, 256)) {
    // Copying or printing a parsed document recurses once per level.
    return absl::DataLossError(
        absl::StrCat(name, " in ", path_, " nests deeper than 256 levels"));
  }
  return text;
}

uint64_t ModelFolder::total_bytes() const {
  uint64_t n = 0;
  for (const auto& s : shards_) n += s->file().size();
  return n;
}

}  // namespace mergeserve
