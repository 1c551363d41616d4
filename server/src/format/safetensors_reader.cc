#include "mergeserve/format/safetensors_reader.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "mergeserve/base/status_macros.h"
#include "nlohmann/json.hpp"

namespace mergeserve {
namespace {

using json = nlohmann::json;

absl::Status Corrupt(const std::string& path, const std::string& what) {
  return absl::DataLossError(
      absl::StrCat("invalid safetensors file ", path, ": ", what));
}

bool MulOverflows(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsReader>> SafetensorsReader::Open(
    const std::string& path) {
  std::unique_ptr<SafetensorsReader> r(new SafetensorsReader());
  MS_ASSIGN_OR_RETURN(r->file_, MappedFile::Open(path));
  const uint8_t* base = r->file_->data();
  const uint64_t size = r->file_->size();
  if (size < 8)
    return Corrupt(path, "file shorter than the 8-byte header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];
  if (header_len > kMaxHeaderBytes) {
    return Corrupt(path,
                   absl::StrCat("header length ", header_len, " exceeds the ",
                                kMaxHeaderBytes, "-byte limit"));
  }
  if (header_len > size - 8) {
    return Corrupt(path, absl::StrCat("header length ", header_len,
                                      " runs past the end of the file (", size,
                                      " bytes)"));
  }
  const char* hbegin = reinterpret_cast<const char*>(base + 8);
  if (header_len == 0 || hbegin[0] != '{') {
    return Corrupt(path, "header is not a JSON object");
  }
  json header = json::parse(hbegin, hbegin + header_len, nullptr,
                            /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return Corrupt(path, "header is not valid JSON");
  }
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = size - data_start;

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return Corrupt(path, "__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          return Corrupt(path, absl::StrCat("__metadata__ value for '", m.key(),
                                            "' is not a string"));
        }
        r->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = absl::StrCat("tensor '", name, "': ");
    if (!v.is_object()) return Corrupt(path, where + "entry is not an object");
    for (auto f = v.begin(); f != v.end(); ++f) {
      if (f.key() != "dtype" && f.key() != "shape" &&
          f.key() != "data_offsets") {
        return Corrupt(path, where + "unknown field '" + f.key() + "'");
      }
    }
    TensorInfo info;
    info.name = name;
    auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string()) {
      return Corrupt(path, where + "missing dtype");
    }
    auto parsed = DTypeFromName(dt->get<std::string>());
    if (!parsed) {
      return Corrupt(path,
                     where + "unknown dtype '" + dt->get<std::string>() + "'");
    }
    info.dtype = *parsed;
    auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array()) {
      return Corrupt(path, where + "missing shape");
    }
    uint64_t numel = 1;
    for (const json& d : *sh) {
      if (!d.is_number_unsigned()) {
        return Corrupt(path, where + "shape has a non-integer or negative dim");
      }
      const uint64_t dim = d.get<uint64_t>();
      if (dim > static_cast<uint64_t>(INT64_MAX) ||
          MulOverflows(numel, dim, &numel)) {
        return Corrupt(path, where + "shape overflows");
      }
      info.shape.push_back(static_cast<int64_t>(dim));
    }
    uint64_t nbytes;
    if (MulOverflows(numel, DTypeSize(info.dtype), &nbytes)) {
      return Corrupt(path, where + "byte size overflows");
    }
    auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 ||
        !(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned()) {
      return Corrupt(path, where + "data_offsets must be [begin, end]");
    }
    const uint64_t b = (*off)[0].get<uint64_t>();
    const uint64_t e = (*off)[1].get<uint64_t>();
    if (b > e) return Corrupt(path, where + "data_offsets begin > end");
    if (e > data_size) {
      return Corrupt(path, absl::StrCat(where, "data_offsets end ", e,
                                        " is past the data section (",
                                        data_size, " bytes)"));
    }
    if (e - b != nbytes) {
      return Corrupt(path,
                     absl::StrCat(where, "shape x dtype is ", nbytes,
                                  " bytes but data_offsets span ", e - b));
    }
    info.offset = data_start + b;
    info.nbytes = nbytes;
    r->tensors_.push_back(std::move(info));
  }

  // The tensors must tile the data section exactly: no gaps, no overlap.
  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : r->tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) {
              return a->offset != b->offset ? a->offset < b->offset
                                            : a->nbytes < b->nbytes;
            });
  uint64_t expect = data_start;
  for (const TensorInfo* t : by_offset) {
    if (t->offset < expect) {
      return Corrupt(path, "tensor '" + t->name + "' overlaps another tensor");
    }
    if (t->offset > expect) {
      return Corrupt(path,
                     absl::StrCat("gap of ", t->offset - expect,
                                  " bytes before tensor '", t->name, "'"));
    }
    expect = t->offset + t->nbytes;
  }
  if (expect != size) {
    return Corrupt(path, absl::StrCat(size - expect,
                                      " trailing bytes after the last tensor"));
  }

  std::sort(
      r->tensors_.begin(), r->tensors_.end(),
      [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  for (size_t i = 0; i < r->tensors_.size(); ++i) {
    r->index_[r->tensors_[i].name] = i;
  }
  return r;
}

const TensorInfo* SafetensorsReader::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace mergeserve
