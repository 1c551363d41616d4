#include "mergeserve/format/torch_checkpoint.h"

#include <cstring>
#include <map>
#include <memory>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "mergeserve/base/status_macros.h"
#include "mergeserve/format/mapped_file.h"
#include "mergeserve/format/safetensors_writer.h"

namespace mergeserve {
namespace {

uint64_t Le(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// The stored (uncompressed) entries of a zip archive: name -> bytes.
struct ZipEntry {
  const uint8_t* data = nullptr;
  uint64_t size = 0;
};

absl::StatusOr<std::map<std::string, ZipEntry>> ReadZip(const std::string& path,
                                                        const uint8_t* b,
                                                        uint64_t n) {
  auto bad = [&](const std::string& why) {
    return absl::DataLossError(
        absl::StrCat(path, ": not a torch.save zip archive (", why, ")"));
  };
  if (n < 22) return bad("too short");
  // End of central directory: the last signature within the comment range.
  int64_t eocd = -1;
  for (int64_t i = static_cast<int64_t>(n) - 22;
       i >= 0 && i >= static_cast<int64_t>(n) - 22 - 65535; --i) {
    if (Le(b + i, 4) == 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) return bad("no end of central directory");
  uint64_t count = Le(b + eocd + 10, 2);
  uint64_t cd = Le(b + eocd + 16, 4);
  if (cd == 0xFFFFFFFF || count == 0xFFFF) {
    // Zip64: its locator precedes the record.
    if (eocd < 20 || Le(b + eocd - 20, 4) != 0x07064b50) return bad("zip64");
    const uint64_t rec = Le(b + eocd - 20 + 8, 8);
    if (rec + 56 > n || Le(b + rec, 4) != 0x06064b50) return bad("zip64");
    count = Le(b + rec + 32, 8);
    cd = Le(b + rec + 48, 8);
  }
  std::map<std::string, ZipEntry> out;
  uint64_t at = cd;
  for (uint64_t i = 0; i < count; ++i) {
    if (at + 46 > n || Le(b + at, 4) != 0x02014b50) return bad("directory");
    const uint64_t method = Le(b + at + 10, 2);
    uint64_t size = Le(b + at + 24, 4);
    const uint64_t name_len = Le(b + at + 28, 2);
    const uint64_t extra_len = Le(b + at + 30, 2);
    const uint64_t comment_len = Le(b + at + 32, 2);
    uint64_t local = Le(b + at + 42, 4);
    if (at + 46 + name_len + extra_len > n) return bad("directory");
    const std::string name(reinterpret_cast<const char*>(b + at + 46),
                           name_len);
    // Zip64 sizes and offsets live in extra field 1, in this order.
    const uint8_t* x = b + at + 46 + name_len;
    for (uint64_t k = 0; k + 4 <= extra_len;) {
      const uint64_t id = Le(x + k, 2), len = Le(x + k + 2, 2);
      if (id == 1) {
        uint64_t p = k + 4;
        if (size == 0xFFFFFFFF && p + 8 <= k + 4 + len) {
          p += 8;  // uncompressed size first
          size = Le(x + k + 4, 8);
        }
        if (Le(b + at + 20, 4) == 0xFFFFFFFF) p += 8;  // compressed size
        if (local == 0xFFFFFFFF && p + 8 <= k + 4 + len) local = Le(x + p, 8);
      }
      k += 4 + len;
    }
    if (method != 0) {
      return bad(absl::StrCat("entry '", name, "' is compressed"));
    }
    if (local + 30 > n || Le(b + local, 4) != 0x04034b50) return bad("entry");
    const uint64_t start =
        local + 30 + Le(b + local + 26, 2) + Le(b + local + 28, 2);
    if (start > n || size > n - start) return bad("entry past the end");
    out[name] = {b + start, size};
    at += 46 + name_len + extra_len + comment_len;
  }
  return out;
}

// A value on the pickle machine's stack.
struct Value;
using ValuePtr = std::shared_ptr<Value>;
struct Value {
  enum Kind {
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kTuple,
    kList,
    kDict,
    kGlobal,
    kStorage,
    kTensor,
    kMark
  } kind = kNone;
  int64_t i = 0;
  double f = 0;
  std::string s;                // string; global "module.name"; storage key
  std::vector<ValuePtr> items;  // tuple, list; dict as key, value, ...
  DType dtype = DType::kF32;    // storage, tensor
  PickledTensor tensor;
};

ValuePtr Make(Value::Kind k) {
  auto v = std::make_shared<Value>();
  v->kind = k;
  return v;
}

std::optional<DType> StorageType(const std::string& global) {
  static const std::map<std::string, DType> kTypes = {
      {"torch.DoubleStorage", DType::kF64},
      {"torch.FloatStorage", DType::kF32},
      {"torch.HalfStorage", DType::kF16},
      {"torch.BFloat16Storage", DType::kBF16},
      {"torch.LongStorage", DType::kI64},
      {"torch.IntStorage", DType::kI32},
      {"torch.ShortStorage", DType::kI16},
      {"torch.CharStorage", DType::kI8},
      {"torch.ByteStorage", DType::kU8},
      {"torch.BoolStorage", DType::kBool}};
  auto it = kTypes.find(global);
  if (it == kTypes.end()) return std::nullopt;
  return it->second;
}

class Unpickler {
 public:
  Unpickler(std::string path, const uint8_t* b, uint64_t n)
      : path_(std::move(path)), b_(b), n_(n) {}

  absl::StatusOr<ValuePtr> Run() {
    while (true) {
      MS_ASSIGN_OR_RETURN(uint8_t op, Byte());
      switch (op) {
        case 0x80:
          MS_RETURN_IF_ERROR(Bytes(1).status());
          break;  // PROTO
        case 0x95:
          MS_RETURN_IF_ERROR(Bytes(8).status());
          break;   // FRAME
        case '.':  // STOP
          if (stack_.size() != 1) return Bad("unbalanced stack at STOP");
          return stack_.back();
        case '(':
          stack_.push_back(Make(Value::kMark));
          break;
        case '}':
          stack_.push_back(Make(Value::kDict));
          break;
        case ']':
          stack_.push_back(Make(Value::kList));
          break;
        case ')':
          stack_.push_back(Make(Value::kTuple));
          break;
        case 'N':
          stack_.push_back(Make(Value::kNone));
          break;
        case 0x88:
        case 0x89: {
          auto v = Make(Value::kBool);
          v->i = op == 0x88;
          stack_.push_back(v);
          break;
        }
        case 'J':
          MS_RETURN_IF_ERROR(PushInt(4, true));
          break;
        case 'K':
          MS_RETURN_IF_ERROR(PushInt(1, false));
          break;
        case 'M':
          MS_RETURN_IF_ERROR(PushInt(2, false));
          break;
        case 0x8a: {  // LONG1
          MS_ASSIGN_OR_RETURN(uint8_t len, Byte());
          if (len > 8) return Bad("integer too large");
          MS_ASSIGN_OR_RETURN(const uint8_t* p, Bytes(len));
          uint64_t u = len ? Le(p, len) : 0;
          if (len && len < 8 && (p[len - 1] & 0x80))
            u |= ~uint64_t{0} << (8 * len);
          auto v = Make(Value::kInt);
          v->i = static_cast<int64_t>(u);
          stack_.push_back(v);
          break;
        }
        case 'G': {  // BINFLOAT, big-endian
          MS_ASSIGN_OR_RETURN(const uint8_t* p, Bytes(8));
          uint64_t u = 0;
          for (int k = 0; k < 8; ++k) u = (u << 8) | p[k];
          auto v = Make(Value::kFloat);
          std::memcpy(&v->f, &u, 8);
          stack_.push_back(v);
          break;
        }
        case 'X':
          MS_RETURN_IF_ERROR(PushString(4));
          break;
        case 0x8c:
          MS_RETURN_IF_ERROR(PushString(1));
          break;
        case 0x8d:
          MS_RETURN_IF_ERROR(PushString(8));
          break;
        case 'B':
          MS_RETURN_IF_ERROR(PushString(4));
          break;
        case 'C':
          MS_RETURN_IF_ERROR(PushString(1));
          break;
        case 'q':
          MS_RETURN_IF_ERROR(Put(1));
          break;
        case 'r':
          MS_RETURN_IF_ERROR(Put(4));
          break;
        case 0x94:  // MEMOIZE
          if (stack_.empty()) return Bad("MEMOIZE on an empty stack");
          memo_[memo_.size()] = stack_.back();
          break;
        case 'h':
          MS_RETURN_IF_ERROR(Get(1));
          break;
        case 'j':
          MS_RETURN_IF_ERROR(Get(4));
          break;
        case 'c': {  // GLOBAL module\nname\n
          MS_ASSIGN_OR_RETURN(std::string module, Line());
          MS_ASSIGN_OR_RETURN(std::string name, Line());
          MS_RETURN_IF_ERROR(PushGlobal(module, name));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          MS_ASSIGN_OR_RETURN(ValuePtr name, Pop());
          MS_ASSIGN_OR_RETURN(ValuePtr module, Pop());
          if (name->kind != Value::kString || module->kind != Value::kString) {
            return Bad("STACK_GLOBAL without names");
          }
          MS_RETURN_IF_ERROR(PushGlobal(module->s, name->s));
          break;
        }
        case 't': {
          MS_ASSIGN_OR_RETURN(auto items, PopToMark());
          auto v = Make(Value::kTuple);
          v->items = std::move(items);
          stack_.push_back(v);
          break;
        }
        case 0x85:
        case 0x86:
        case 0x87: {
          const size_t k = op - 0x84;
          if (stack_.size() < k) return Bad("TUPLE past the stack");
          auto v = Make(Value::kTuple);
          v->items.assign(stack_.end() - k, stack_.end());
          stack_.resize(stack_.size() - k);
          stack_.push_back(v);
          break;
        }
        case 'a': {
          MS_ASSIGN_OR_RETURN(ValuePtr x, Pop());
          MS_ASSIGN_OR_RETURN(ValuePtr list, Top(Value::kList));
          list->items.push_back(x);
          break;
        }
        case 'e': {
          MS_ASSIGN_OR_RETURN(auto items, PopToMark());
          MS_ASSIGN_OR_RETURN(ValuePtr list, Top(Value::kList));
          list->items.insert(list->items.end(), items.begin(), items.end());
          break;
        }
        case 's': {
          MS_ASSIGN_OR_RETURN(ValuePtr value, Pop());
          MS_ASSIGN_OR_RETURN(ValuePtr key, Pop());
          MS_ASSIGN_OR_RETURN(ValuePtr dict, Top(Value::kDict));
          dict->items.push_back(key);
          dict->items.push_back(value);
          break;
        }
        case 'u': {
          MS_ASSIGN_OR_RETURN(auto items, PopToMark());
          if (items.size() % 2) return Bad("SETITEMS with an odd count");
          MS_ASSIGN_OR_RETURN(ValuePtr dict, Top(Value::kDict));
          dict->items.insert(dict->items.end(), items.begin(), items.end());
          break;
        }
        case 'Q': {  // BINPERSID: ('storage', type, key, location, numel)
          MS_ASSIGN_OR_RETURN(ValuePtr pid, Pop());
          if (pid->kind != Value::kTuple || pid->items.size() < 5 ||
              pid->items[0]->kind != Value::kString ||
              pid->items[0]->s != "storage" ||
              pid->items[1]->kind != Value::kGlobal ||
              pid->items[2]->kind != Value::kString) {
            return Bad("a persistent id that is not a storage");
          }
          auto type = StorageType(pid->items[1]->s);
          if (!type) return Bad("a persistent id that is not a storage");
          auto v = Make(Value::kStorage);
          v->dtype = *type;
          v->s = pid->items[2]->s;
          stack_.push_back(v);
          break;
        }
        case 'R': {  // REDUCE
          MS_ASSIGN_OR_RETURN(ValuePtr args, Pop());
          MS_ASSIGN_OR_RETURN(ValuePtr fn, Pop());
          if (fn->kind != Value::kGlobal || args->kind != Value::kTuple) {
            return Bad("REDUCE of something other than an allowed global");
          }
          MS_ASSIGN_OR_RETURN(ValuePtr v, Call(fn->s, args->items));
          stack_.push_back(v);
          break;
        }
        case 'b': {  // BUILD: state of a dict (_metadata) is ignored
          MS_ASSIGN_OR_RETURN(ValuePtr state, Pop());
          (void)state;
          if (stack_.empty()) return Bad("BUILD on an empty stack");
          break;
        }
        default:
          return Bad(
              absl::StrFormat("pickle opcode 0x%02x is not supported", op));
      }
    }
  }

 private:
  absl::Status Bad(const std::string& why) const {
    return absl::DataLossError(
        absl::StrCat(path_, ": unreadable checkpoint pickle: ", why));
  }
  absl::StatusOr<uint8_t> Byte() {
    if (at_ >= n_) return Bad("it ends early");
    return b_[at_++];
  }
  absl::StatusOr<const uint8_t*> Bytes(uint64_t k) {
    if (k > n_ - at_) return Bad("it ends early");
    const uint8_t* p = b_ + at_;
    at_ += k;
    return p;
  }
  absl::StatusOr<std::string> Line() {
    std::string s;
    while (true) {
      MS_ASSIGN_OR_RETURN(uint8_t c, Byte());
      if (c == '\n') return s;
      if (s.size() > 256) return Bad("a global name is too long");
      s.push_back(static_cast<char>(c));
    }
  }
  absl::Status PushInt(int bytes, bool is_signed) {
    MS_ASSIGN_OR_RETURN(const uint8_t* p, Bytes(bytes));
    auto v = Make(Value::kInt);
    v->i = is_signed ? static_cast<int32_t>(Le(p, bytes))
                     : static_cast<int64_t>(Le(p, bytes));
    stack_.push_back(v);
    return absl::OkStatus();
  }
  absl::Status PushString(int len_bytes) {
    MS_ASSIGN_OR_RETURN(const uint8_t* p, Bytes(len_bytes));
    const uint64_t len = Le(p, len_bytes);
    MS_ASSIGN_OR_RETURN(const uint8_t* s, Bytes(len));
    auto v = Make(Value::kString);
    v->s.assign(reinterpret_cast<const char*>(s), len);
    stack_.push_back(v);
    return absl::OkStatus();
  }
  absl::Status Put(int bytes) {
    MS_ASSIGN_OR_RETURN(const uint8_t* p, Bytes(bytes));
    if (stack_.empty()) return Bad("PUT on an empty stack");
    memo_[Le(p, bytes)] = stack_.back();
    return absl::OkStatus();
  }
  absl::Status Get(int bytes) {
    MS_ASSIGN_OR_RETURN(const uint8_t* p, Bytes(bytes));
    auto it = memo_.find(Le(p, bytes));
    if (it == memo_.end()) return Bad("GET of an unknown memo entry");
    stack_.push_back(it->second);
    return absl::OkStatus();
  }
  // Only globals that rebuild tensors resolve; nothing is ever called.
  absl::Status PushGlobal(const std::string& module, const std::string& name) {
    const std::string global = absl::StrCat(module, ".", name);
    if (global != "collections.OrderedDict" &&
        global != "torch._utils._rebuild_tensor_v2" && !StorageType(global)) {
      return absl::DataLossError(absl::StrCat(
          path_, ": the checkpoint's pickle names global '",
          global.substr(0, 120),
          "', which is not allowed (only tensors are read; nothing in the "
          "file is run)"));
    }
    auto v = Make(Value::kGlobal);
    v->s = global;
    stack_.push_back(v);
    return absl::OkStatus();
  }
  absl::StatusOr<ValuePtr> Pop() {
    if (stack_.empty()) return Bad("pop from an empty stack");
    ValuePtr v = stack_.back();
    stack_.pop_back();
    if (v->kind == Value::kMark) return Bad("a mark where a value belongs");
    return v;
  }
  absl::StatusOr<ValuePtr> Top(Value::Kind kind) {
    if (stack_.empty() || stack_.back()->kind != kind) {
      return Bad("an operation on the wrong kind of value");
    }
    return stack_.back();
  }
  absl::StatusOr<std::vector<ValuePtr>> PopToMark() {
    std::vector<ValuePtr> items;
    while (true) {
      if (stack_.empty()) return Bad("no mark");
      ValuePtr v = stack_.back();
      stack_.pop_back();
      if (v->kind == Value::kMark) break;
      items.push_back(v);
    }
    return std::vector<ValuePtr>(items.rbegin(), items.rend());
  }
  absl::StatusOr<std::vector<int64_t>> Ints(const ValuePtr& v) {
    if (v->kind != Value::kTuple) return Bad("a size that is not a tuple");
    std::vector<int64_t> out;
    for (const ValuePtr& x : v->items) {
      if (x->kind != Value::kInt || x->i < 0) return Bad("a bad size");
      out.push_back(x->i);
    }
    return out;
  }
  absl::StatusOr<ValuePtr> Call(const std::string& fn,
                                const std::vector<ValuePtr>& args) {
    if (fn == "collections.OrderedDict") {
      if (!args.empty()) return Bad("OrderedDict with arguments");
      return Make(Value::kDict);
    }
    if (fn == "torch._utils._rebuild_tensor_v2") {
      if (args.size() < 4 || args[0]->kind != Value::kStorage ||
          args[1]->kind != Value::kInt || args[1]->i < 0) {
        return Bad("_rebuild_tensor_v2 with bad arguments");
      }
      auto v = Make(Value::kTensor);
      v->tensor.dtype = args[0]->dtype;
      v->tensor.storage_key = args[0]->s;
      v->tensor.storage_offset = args[1]->i;
      MS_ASSIGN_OR_RETURN(v->tensor.shape, Ints(args[2]));
      MS_ASSIGN_OR_RETURN(v->tensor.stride, Ints(args[3]));
      if (v->tensor.shape.size() != v->tensor.stride.size()) {
        return Bad("a tensor whose size and stride differ in rank");
      }
      return v;
    }
    return Bad(absl::StrCat("'", fn, "' cannot be called"));
  }

  std::string path_;
  const uint8_t* b_;
  uint64_t n_;
  uint64_t at_ = 0;
  std::vector<ValuePtr> stack_;
  std::map<uint64_t, ValuePtr> memo_;
};

struct Archive {
  std::unique_ptr<MappedFile> file;
  std::map<std::string, ZipEntry> entries;
  std::string prefix;  // "<top>/"
  std::vector<PickledTensor> tensors;
};

absl::StatusOr<Archive> OpenArchive(const std::string& path) {
  Archive a;
  MS_ASSIGN_OR_RETURN(a.file, MappedFile::Open(path));
  MS_ASSIGN_OR_RETURN(a.entries, ReadZip(path, a.file->data(), a.file->size()));
  MS_ASSIGN_OR_RETURN(a.tensors,
                      ReadTorchArchive(path, a.file->data(), a.file->size()));
  for (const auto& [name, e] : a.entries) {
    if (absl::EndsWith(name, "/data.pkl")) {
      a.prefix = name.substr(0, name.size() - 8);
    }
  }
  return a;
}

}  // namespace

absl::StatusOr<std::vector<PickledTensor>> ReadTorchArchive(
    const std::string& path, const uint8_t* bytes, uint64_t size) {
  MS_ASSIGN_OR_RETURN(auto entries, ReadZip(path, bytes, size));
  const ZipEntry* pkl = nullptr;
  std::string prefix;
  for (const auto& [name, e] : entries) {
    if (absl::EndsWith(name, "/data.pkl") &&
        name.find('/') == name.size() - 9) {
      if (pkl != nullptr) {
        return absl::DataLossError(
            absl::StrCat(path, ": the archive holds more than one data.pkl"));
      }
      pkl = &e;
      prefix = name.substr(0, name.size() - 8);
    }
  }
  if (pkl == nullptr) {
    return absl::DataLossError(absl::StrCat(
        path,
        ": no data.pkl (the legacy non-zip format is not read; re-save "
        "it with a recent torch.save or as safetensors)"));
  }
  Unpickler u(path, pkl->data, pkl->size);
  MS_ASSIGN_OR_RETURN(ValuePtr root, u.Run());
  if (root->kind != Value::kDict) {
    return absl::DataLossError(
        absl::StrCat(path, ": the checkpoint is not a dict of tensors"));
  }
  std::vector<PickledTensor> out;
  for (size_t i = 0; i + 1 < root->items.size(); i += 2) {
    const ValuePtr& k = root->items[i];
    const ValuePtr& v = root->items[i + 1];
    if (k->kind != Value::kString || v->kind != Value::kTensor) {
      return absl::DataLossError(absl::StrCat(
          path, ": the checkpoint is not a flat dict of named tensors"));
    }
    PickledTensor t = v->tensor;
    t.name = k->s;
    // Every element the strides reach lies inside the storage.
    auto it = entries.find(prefix + "data/" + t.storage_key);
    if (it == entries.end()) {
      return absl::DataLossError(absl::StrCat(path, ": tensor '", t.name,
                                              "' names a missing storage"));
    }
    const uint64_t es = DTypeSize(t.dtype);
    uint64_t last = static_cast<uint64_t>(t.storage_offset);
    bool empty = false;
    for (size_t d = 0; d < t.shape.size(); ++d) {
      if (t.shape[d] == 0) empty = true;
      if (t.shape[d] > 0) {
        last += static_cast<uint64_t>(t.shape[d] - 1) *
                static_cast<uint64_t>(t.stride[d]);
      }
    }
    if (!empty && (last + 1) * es > it->second.size) {
      return absl::DataLossError(absl::StrCat(path, ": tensor '", t.name,
                                              "' reaches past its storage"));
    }
    out.push_back(std::move(t));
  }
  return out;
}

absl::Status ConvertTorchCheckpoint(const std::vector<std::string>& files,
                                    const std::string& out_dir) {
  std::vector<Archive> archives;
  std::vector<TensorSpec> specs;
  std::vector<std::pair<size_t, size_t>> where;  // archive, tensor
  for (const std::string& f : files) {
    MS_ASSIGN_OR_RETURN(Archive a, OpenArchive(f));
    archives.push_back(std::move(a));
    const Archive& back = archives.back();
    for (size_t i = 0; i < back.tensors.size(); ++i) {
      const PickledTensor& t = back.tensors[i];
      specs.push_back({t.name, t.dtype, t.shape});
      where.push_back({archives.size() - 1, i});
    }
  }
  MS_ASSIGN_OR_RETURN(auto writer, SingleFileWriter(out_dir, specs));
  for (size_t k = 0; k < specs.size(); ++k) {
    const Archive& a = archives[where[k].first];
    const PickledTensor& t = a.tensors[where[k].second];
    const uint8_t* storage =
        a.entries.at(a.prefix + "data/" + t.storage_key).data;
    const uint64_t es = DTypeSize(t.dtype);
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    if (numel == 0) continue;
    // Contiguous (row-major) tensors are one copy; others are gathered.
    bool contiguous = true;
    int64_t expect = 1;
    for (size_t d = t.shape.size(); d-- > 0;) {
      if (t.shape[d] != 1 && t.stride[d] != expect) contiguous = false;
      expect *= t.shape[d];
    }
    const uint8_t* base = storage + t.storage_offset * es;
    if (contiguous) {
      MS_RETURN_IF_ERROR(writer->Write(k, 0, base, numel * es));
      continue;
    }
    std::vector<uint8_t> buf(static_cast<size_t>(numel) * es);
    std::vector<int64_t> idx(t.shape.size(), 0);
    for (int64_t e = 0; e < numel; ++e) {
      int64_t off = 0;
      for (size_t d = 0; d < idx.size(); ++d) off += idx[d] * t.stride[d];
      std::memcpy(buf.data() + e * es, base + off * es, es);
      for (size_t d = idx.size(); d-- > 0;) {
        if (++idx[d] < t.shape[d]) break;
        idx[d] = 0;
      }
    }
    MS_RETURN_IF_ERROR(writer->Write(k, 0, buf.data(), buf.size()));
  }
  return writer->Commit();
}

}  // namespace mergeserve
