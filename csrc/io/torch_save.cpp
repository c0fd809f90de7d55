#include "io/torch_save.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <caffe2/serialize/inline_container.h>

#include <cstring>
#include <map>
#include <unordered_map>
#include <vector>

namespace torchtl::io {
namespace {

// A pickle stack entry: a value, or a Python global (a callable that REDUCE applies).
struct Value {
  c10::IValue value;
  std::string global;  // "module.name" when this entry is a global
};

// torch.save's storage classes (pickled by name, e.g. torch.FloatStorage) and their dtypes.
const std::map<std::string, c10::ScalarType>& storage_types() {
  static const std::map<std::string, c10::ScalarType> types = {
      {"torch.DoubleStorage", c10::kDouble},   {"torch.FloatStorage", c10::kFloat},
      {"torch.HalfStorage", c10::kHalf},       {"torch.BFloat16Storage", c10::kBFloat16},
      {"torch.LongStorage", c10::kLong},       {"torch.IntStorage", c10::kInt},
      {"torch.ShortStorage", c10::kShort},     {"torch.CharStorage", c10::kChar},
      {"torch.ByteStorage", c10::kByte},       {"torch.BoolStorage", c10::kBool},
      {"torch.ComplexFloatStorage", c10::kComplexFloat}, {"torch.ComplexDoubleStorage", c10::kComplexDouble},
  };
  return types;
}

std::vector<int64_t> int_list(const c10::IValue& value) {
  std::vector<int64_t> out;
  for (const auto& item : value.toTupleRef().elements()) out.push_back(item.toInt());
  return out;
}

// libtorch's Unpickler cannot be told how to build an OrderedDict (its readGlobal is private and
// special-cases it to None), hence this reader. It runs the subset of pickle (protocols 2 to 4) that torch.save emits for weights and checkpoints.
class TorchSaveReader {
 public:
  TorchSaveReader(const std::string& path, caffe2::serialize::PyTorchStreamReader& archive, const char* data, size_t size)
      : path_(path), archive_(archive), data_(data), end_(data + size) {}

  c10::IValue run() {
    while (true) {
      const auto op = static_cast<uint8_t>(read<char>());
      if (op == '.') break;  // STOP
      step(op);
    }
    check(stack_.size() == 1 && stack_.back().global.empty(), "the pickle does not end with exactly one object");
    return stack_.back().value;
  }

 private:
  template <typename... Args>
  void check(bool ok, const Args&... why) {
    TORCH_CHECK_VALUE(ok, "cannot read '", path_, "' as a torch.save file: ", why...);
  }

  template <typename T>
  T read() {
    check(end_ - data_ >= static_cast<std::ptrdiff_t>(sizeof(T)), "the pickle is truncated");
    T out;
    std::memcpy(&out, data_, sizeof(T));  // pickle numbers are little-endian, as is every host torch runs on
    data_ += sizeof(T);
    return out;
  }

  std::string read_bytes(size_t n) {
    check(static_cast<size_t>(end_ - data_) >= n, "the pickle is truncated");
    std::string out(data_, n);
    data_ += n;
    return out;
  }

  std::string read_line() {
    const char* newline = static_cast<const char*>(std::memchr(data_, '\n', end_ - data_));
    check(newline != nullptr, "the pickle is truncated");
    std::string out(data_, newline);
    data_ = newline + 1;
    return out;
  }

  Value pop() {
    check(!stack_.empty(), "the pickle's stack underflows");
    auto out = std::move(stack_.back());
    stack_.pop_back();
    return out;
  }

  // A global used as data rather than called (the storage class in a persistent id) stands for
  // its name.
  static c10::IValue as_data(const Value& entry) {
    return entry.global.empty() ? entry.value : c10::IValue(entry.global);
  }

  c10::IValue pop_value() { return as_data(pop()); }

  // The entries pushed since the last MARK, removed from the stack.
  std::vector<c10::IValue> pop_to_mark() {
    check(!marks_.empty() && marks_.back() <= stack_.size(), "the pickle has no matching MARK");
    std::vector<c10::IValue> out;
    for (auto i = marks_.back(); i < stack_.size(); ++i) out.push_back(as_data(stack_[i]));
    stack_.resize(marks_.back());
    marks_.pop_back();
    return out;
  }

  void push(c10::IValue value) { stack_.push_back({std::move(value), ""}); }

  void memo_put(uint32_t id) {
    check(!stack_.empty(), "the pickle memoizes an empty stack");
    memo_[id] = stack_.back();
  }

  void memo_get(uint32_t id) {
    auto it = memo_.find(id);
    check(it != memo_.end(), "the pickle refers to memo entry ", id, " before writing it");
    stack_.push_back(it->second);
  }

  void set_items(c10::IValue& dict, const std::vector<c10::IValue>& items) {
    check(dict.isGenericDict() && items.size() % 2 == 0, "the pickle sets items on a non-dict");
    auto d = dict.toGenericDict();
    for (size_t i = 0; i < items.size(); i += 2) d.insert_or_assign(items[i], items[i + 1]);
  }

  void append(c10::IValue& list, const std::vector<c10::IValue>& items) {
    check(list.isList(), "the pickle appends to a non-list");
    auto l = list.toList();
    for (const auto& item : items) l.push_back(item);
  }

  // persistent_load: ('storage', storage class, key, location, numel) -> a flat tensor over the
  // record data/<key>. Storages shared by several tensors (views) are read once.
  c10::IValue load_storage(const c10::IValue& pid) {
    check(pid.isTuple() && pid.toTupleRef().elements().size() >= 5, "unknown persistent id");
    const auto& args = pid.toTupleRef().elements();
    check(args[0].isString() && args[0].toStringRef() == "storage", "unknown persistent id");
    const auto& key = args[2].toStringRef();
    if (auto it = storages_.find(key); it != storages_.end()) return it->second;
    const auto type = storage_types().find(args[1].toStringRef());
    check(type != storage_types().end(), "unsupported storage type ", args[1].toStringRef());
    const int64_t numel = args[4].toInt();
    auto tensor = at::empty({numel}, at::TensorOptions().dtype(type->second));
    if (numel > 0) {
      const auto record = "data/" + key;
      check(archive_.hasRecord(record), "the archive has no record ", record);
      auto [bytes, size] = archive_.getRecord(record);
      check(size == static_cast<size_t>(tensor.nbytes()), "record ", record, " holds ", size, " bytes, expected ",
            tensor.nbytes());
      std::memcpy(tensor.data_ptr(), bytes.get(), size);
    }
    storages_.emplace(key, tensor);
    return tensor;
  }

  c10::IValue call(const std::string& global, const c10::IValue& args_value) {
    check(args_value.isTuple(), "arguments of ", global, " are not a tuple");
    const auto& args = args_value.toTupleRef().elements();
    if (global == "collections.OrderedDict") {
      // model.state_dict(): items follow through SETITEMS, attributes (_metadata) through BUILD.
      return c10::impl::GenericDict(c10::AnyType::get(), c10::AnyType::get());
    }
    if (global == "torch._utils._rebuild_tensor_v2" || global == "torch._utils._rebuild_tensor") {
      // (storage, storage_offset, size, stride, ...requires_grad, backward_hooks, metadata)
      check(args.size() >= 4 && args[0].isTensor(), "bad arguments to ", global);
      const auto storage = args[0].toTensor();
      return at::empty({0}, storage.options())
          .set_(storage.storage(), args[1].toInt(), int_list(args[2]), int_list(args[3]));
    }
    if (global == "torch._utils._rebuild_parameter" || global == "torch._utils._rebuild_parameter_with_state") {
      check(!args.empty() && args[0].isTensor(), "bad arguments to ", global);
      return args[0];  // (data, requires_grad, backward_hooks[, state]): the data is the weight
    }
    if (global == "torch.jit._pickle.restore_type_tag") {
      check(!args.empty(), "bad arguments to ", global);
      return args[0];  // libtorch's torch::pickle_save tags containers with their TorchScript type
    }
    check(false, "it holds a Python object (", global, ") that a C++ program cannot rebuild; save a dict of ",
          "tensors such as model.state_dict()");
    return {};
  }

  void step(uint8_t op) {
    switch (op) {
      case 0x80: read<uint8_t>(); break;  // PROTO
      case 0x95: read<uint64_t>(); break;  // FRAME (protocol 4): framing only
      case 'c': {                          // GLOBAL
        auto module = read_line();
        auto name = read_line();
        stack_.push_back({c10::IValue(), module + "." + name});
        break;
      }
      case 'q': memo_put(read<uint8_t>()); break;   // BINPUT
      case 'r': memo_put(read<uint32_t>()); break;  // LONG_BINPUT
      case 0x94: memo_put(static_cast<uint32_t>(memo_.size())); break;  // MEMOIZE
      case 'h': memo_get(read<uint8_t>()); break;   // BINGET
      case 'j': memo_get(read<uint32_t>()); break;  // LONG_BINGET
      case '(': marks_.push_back(stack_.size()); break;  // MARK
      case ')': push(c10::ivalue::Tuple::create({})); break;
      case 't': push(c10::ivalue::Tuple::create(pop_to_mark())); break;
      case 0x85: case 0x86: case 0x87: {  // TUPLE1..3
        std::vector<c10::IValue> items(op - 0x84);
        for (auto it = items.rbegin(); it != items.rend(); ++it) *it = pop_value();
        push(c10::ivalue::Tuple::create(std::move(items)));
        break;
      }
      case '}': push(c10::impl::GenericDict(c10::AnyType::get(), c10::AnyType::get())); break;
      case ']': push(c10::impl::GenericList(c10::AnyType::get())); break;
      case 's': {  // SETITEM
        auto value = pop_value();
        auto key = pop_value();
        check(!stack_.empty(), "SETITEM without a dict");
        set_items(stack_.back().value, {key, value});
        break;
      }
      case 'u': {  // SETITEMS
        auto items = pop_to_mark();
        check(!stack_.empty(), "SETITEMS without a dict");
        set_items(stack_.back().value, items);
        break;
      }
      case 'a': {  // APPEND
        auto item = pop_value();
        check(!stack_.empty(), "APPEND without a list");
        append(stack_.back().value, {item});
        break;
      }
      case 'e': {  // APPENDS
        auto items = pop_to_mark();
        check(!stack_.empty(), "APPENDS without a list");
        append(stack_.back().value, items);
        break;
      }
      case 'R':     // REDUCE
      case 0x81: {  // NEWOBJ: a class instance (torch.save(model) pickles the nn.Module)
        auto args = pop_value();
        auto callable = pop();
        check(!callable.global.empty(), "a call on something that is not a global");
        push(call(callable.global, args));
        break;
      }
      case 'b': {  // BUILD: set attributes; the only object with any is OrderedDict (_metadata)
        pop();
        check(!stack_.empty() && stack_.back().value.isGenericDict(), "BUILD on an object it cannot rebuild");
        break;
      }
      case 'Q': push(load_storage(pop_value())); break;  // BINPERSID
      case 'K': push(static_cast<int64_t>(read<uint8_t>())); break;   // BININT1
      case 'M': push(static_cast<int64_t>(read<uint16_t>())); break;  // BININT2
      case 'J': push(static_cast<int64_t>(read<int32_t>())); break;   // BININT
      case 0x8a: {  // LONG1: little-endian two's complement
        const auto n = read<uint8_t>();
        check(n <= 8, "an integer wider than 64 bits");
        const auto bytes = read_bytes(n);
        uint64_t bits = 0;
        for (size_t i = 0; i < n; ++i) bits |= static_cast<uint64_t>(static_cast<uint8_t>(bytes[i])) << (8 * i);
        if (n > 0 && n < 8 && (static_cast<uint8_t>(bytes[n - 1]) & 0x80)) bits |= ~uint64_t{0} << (8 * n);
        push(static_cast<int64_t>(bits));
        break;
      }
      case 'G': {  // BINFLOAT: big-endian
        auto bits = read<uint64_t>();
        bits = __builtin_bswap64(bits);
        double value;
        std::memcpy(&value, &bits, sizeof(value));
        push(value);
        break;
      }
      case 'X': push(read_bytes(read<uint32_t>())); break;                     // BINUNICODE
      case 0x8c: push(read_bytes(read<uint8_t>())); break;                     // SHORT_BINUNICODE
      case 0x8d: push(read_bytes(static_cast<size_t>(read<uint64_t>()))); break;  // BINUNICODE8
      case 'T': push(read_bytes(read<uint32_t>())); break;                     // BINSTRING
      case 'U': push(read_bytes(read<uint8_t>())); break;                      // SHORT_BINSTRING
      case 'N': push(c10::IValue()); break;
      case 0x88: push(true); break;
      case 0x89: push(false); break;
      default: check(false, "unsupported pickle opcode ", static_cast<int>(op));
    }
  }

  const std::string& path_;
  caffe2::serialize::PyTorchStreamReader& archive_;
  const char* data_;
  const char* end_;
  std::vector<Value> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint32_t, Value> memo_;
  std::unordered_map<std::string, c10::IValue> storages_;
};

}  // namespace

c10::IValue read_torch_save(const std::string& path) {
  caffe2::serialize::PyTorchStreamReader archive(path);
  TORCH_CHECK_VALUE(archive.hasRecord("data.pkl"), "'", path, "' is not a torch.save file (no data.pkl)");
  auto [pickle, size] = archive.getRecord("data.pkl");
  return TorchSaveReader(path, archive, static_cast<const char*>(pickle.get()), size).run();
}

}  // namespace torchtl::io
