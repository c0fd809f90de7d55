#pragma once
// A small JSON value, parser and writer: enough for the metadata record of a model file
// (io/model_file.h). LibTorch ships no JSON library in its headers, and the record is a few
// hundred bytes, so a dependency would cost more than these lines.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace torchtl::io {

class Json {
 public:
  enum class Kind { Null, Bool, Number, String, Array, Object };
  using Members = std::vector<std::pair<std::string, Json>>;  // in file order, as Python's json keeps them

  Json() = default;
  Json(bool value) : kind_(Kind::Bool), bool_(value) {}  // NOLINT: implicit, as JSON literals read
  Json(int64_t value) : kind_(Kind::Number), number_(static_cast<double>(value)), integer_(true) {}  // NOLINT
  Json(int value) : Json(static_cast<int64_t>(value)) {}  // NOLINT
  Json(double value) : kind_(Kind::Number), number_(value) {}  // NOLINT
  Json(std::string value) : kind_(Kind::String), string_(std::move(value)) {}  // NOLINT
  Json(const char* value) : Json(std::string(value)) {}  // NOLINT
  static Json array(std::vector<Json> items = {});
  static Json object(Members members = {});

  // Throws ValueError naming `what` (e.g. "'best.pt': extra/torchtl_model.json") and the offset.
  static Json parse(const std::string& text, const std::string& what);
  // Compact JSON; numbers round-trip exactly (integers without a fraction).
  std::string dump() const;

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::Null; }
  // A number written without a fraction or exponent (Python's int).
  bool is_integer() const { return kind_ == Kind::Number && integer_; }
  // The typed accessors throw TypeError naming `field` when the value is of another kind.
  bool as_bool(const std::string& field) const;
  double as_double(const std::string& field) const;
  int64_t as_int(const std::string& field) const;  // a whole number only
  const std::string& as_string(const std::string& field) const;
  const std::vector<Json>& as_array(const std::string& field) const;
  const Members& as_object(const std::string& field) const;
  // The member `key` of an object, or nullptr.
  const Json* find(const std::string& key) const;
  // Adds or replaces member `key` of an object.
  void set(const std::string& key, Json value);
  const char* kind_name() const;

 private:
  Kind kind_ = Kind::Null;
  bool bool_ = false;
  double number_ = 0.0;
  bool integer_ = false;  // written without a fraction
  std::string string_;
  std::vector<Json> array_;
  Members object_;
};

}  // namespace torchtl::io
