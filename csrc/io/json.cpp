#include "io/json.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace torchtl::io {
namespace {

class JsonParser {
 public:
  JsonParser(const std::string& text, const std::string& what) : text_(text), what_(what) {}

  Json document() {
    Json value = parse_value(0);
    skip_space();
    fail_unless(pos_ == text_.size(), "text after the JSON value");
    return value;
  }

 private:
  // Deeper nesting than any metadata needs is refused, so hostile input cannot exhaust the stack.
  static constexpr int kMaxDepth = 64;

  template <typename... Args>
  void fail_unless(bool ok, const Args&... why) const {
    TORCH_CHECK_VALUE(ok, what_, " is not valid JSON: ", why..., " at offset ", pos_);
  }

  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\n' || text_[pos_] == '\r' || text_[pos_] == '\t'))
      ++pos_;
  }

  bool consume(const char* literal) {
    const size_t n = std::char_traits<char>::length(literal);
    if (text_.compare(pos_, n, literal) != 0) return false;
    pos_ += n;
    return true;
  }

  Json parse_value(int depth) {
    fail_unless(depth < kMaxDepth, "nested deeper than ", kMaxDepth, " levels");
    skip_space();
    fail_unless(pos_ < text_.size(), "unexpected end");
    const char c = text_[pos_];
    if (c == '{') return parse_object(depth);
    if (c == '[') return parse_array(depth);
    if (c == '"') return Json(parse_string());
    if (consume("true")) return Json(true);
    if (consume("false")) return Json(false);
    if (consume("null")) return Json();
    return parse_number();
  }

  Json parse_object(int depth) {
    ++pos_;
    Json::Members members;
    skip_space();
    if (pos_ < text_.size() && text_[pos_] == '}') {
      ++pos_;
      return Json::object();
    }
    while (true) {
      skip_space();
      fail_unless(pos_ < text_.size() && text_[pos_] == '"', "expected a member name");
      std::string key = parse_string();
      for (const auto& member : members) fail_unless(member.first != key, "member '", key, "' given twice");
      skip_space();
      fail_unless(pos_ < text_.size() && text_[pos_] == ':', "expected ':'");
      ++pos_;
      members.emplace_back(std::move(key), parse_value(depth + 1));
      skip_space();
      fail_unless(pos_ < text_.size(), "unexpected end");
      if (text_[pos_] == '}') {
        ++pos_;
        return Json::object(std::move(members));
      }
      fail_unless(text_[pos_] == ',', "expected ',' or '}'");
      ++pos_;
    }
  }

  Json parse_array(int depth) {
    ++pos_;
    std::vector<Json> items;
    skip_space();
    if (pos_ < text_.size() && text_[pos_] == ']') {
      ++pos_;
      return Json::array();
    }
    while (true) {
      items.push_back(parse_value(depth + 1));
      skip_space();
      fail_unless(pos_ < text_.size(), "unexpected end");
      if (text_[pos_] == ']') {
        ++pos_;
        return Json::array(std::move(items));
      }
      fail_unless(text_[pos_] == ',', "expected ',' or ']'");
      ++pos_;
    }
  }

  unsigned hex4() {
    fail_unless(pos_ + 4 <= text_.size(), "a truncated \\u escape");
    unsigned code = 0;
    for (int i = 0; i < 4; ++i) {
      const char h = text_[pos_++];
      code <<= 4;
      if (h >= '0' && h <= '9') code |= h - '0';
      else if (h >= 'a' && h <= 'f') code |= h - 'a' + 10;
      else if (h >= 'A' && h <= 'F') code |= h - 'A' + 10;
      else fail_unless(false, "a bad \\u escape");
    }
    return code;
  }

  static void append_utf8(std::string& out, unsigned code) {
    if (code < 0x80) {
      out += static_cast<char>(code);
    } else if (code < 0x800) {
      out += static_cast<char>(0xC0 | (code >> 6));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else if (code < 0x10000) {
      out += static_cast<char>(0xE0 | (code >> 12));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (code >> 18));
      out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    }
  }

  std::string parse_string() {
    ++pos_;  // the opening quote
    std::string out;
    while (true) {
      fail_unless(pos_ < text_.size(), "an unterminated string");
      const char c = text_[pos_++];
      if (c == '"') return out;
      fail_unless(static_cast<unsigned char>(c) >= 0x20, "a control character in a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      fail_unless(pos_ < text_.size(), "an unterminated string");
      const char e = text_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned code = hex4();
          if (code >= 0xD800 && code < 0xDC00) {  // a UTF-16 surrogate pair, as Python's json writes non-BMP text
            fail_unless(consume("\\u"), "a lone surrogate");
            const unsigned low = hex4();
            fail_unless(low >= 0xDC00 && low < 0xE000, "a lone surrogate");
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          }
          append_utf8(out, code);
          break;
        }
        default: fail_unless(false, "a bad escape '\\", e, "'");
      }
    }
  }

  Json parse_number() {
    const size_t start = pos_;
    bool integer = true;
    if (pos_ < text_.size() && text_[pos_] == '-') ++pos_;
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c >= '0' && c <= '9') {
        ++pos_;
      } else if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
        integer = false;
        ++pos_;
      } else {
        break;
      }
    }
    fail_unless(pos_ > start, "unexpected character '", text_[start], "'");
    const std::string token = text_.substr(start, pos_ - start);
    char* end = nullptr;
    const double value = std::strtod(token.c_str(), &end);
    fail_unless(end == token.c_str() + token.size() && std::isfinite(value), "bad number '", token, "'");
    if (integer && std::abs(value) < 9007199254740992.0) return Json(static_cast<int64_t>(value));
    return Json(value);
  }

  const std::string& text_;
  const std::string& what_;
  size_t pos_ = 0;
};

void dump_string(const std::string& s, std::string& out) {
  out += '"';
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buffer[8];
          std::snprintf(buffer, sizeof(buffer), "\\u%04x", static_cast<unsigned>(c));
          out += buffer;
        } else {
          out += c;  // UTF-8 passes through, as json.dumps(ensure_ascii=False) writes it
        }
    }
  }
  out += '"';
}

void dump_value(const Json& value, std::string& out);

}  // namespace

Json Json::array(std::vector<Json> items) {
  Json out;
  out.kind_ = Kind::Array;
  out.array_ = std::move(items);
  return out;
}

Json Json::object(Members members) {
  Json out;
  out.kind_ = Kind::Object;
  out.object_ = std::move(members);
  return out;
}

Json Json::parse(const std::string& text, const std::string& what) { return JsonParser(text, what).document(); }

const char* Json::kind_name() const {
  switch (kind_) {
    case Kind::Null: return "null";
    case Kind::Bool: return "a boolean";
    case Kind::Number: return "a number";
    case Kind::String: return "a string";
    case Kind::Array: return "a list";
    case Kind::Object: return "an object";
  }
  return "?";
}

bool Json::as_bool(const std::string& field) const {
  TORCH_CHECK_TYPE(kind_ == Kind::Bool, "field '", field, "' must be true or false, not ", kind_name());
  return bool_;
}

double Json::as_double(const std::string& field) const {
  TORCH_CHECK_TYPE(kind_ == Kind::Number, "field '", field, "' must be a number, not ", kind_name());
  return number_;
}

int64_t Json::as_int(const std::string& field) const {
  TORCH_CHECK_TYPE(kind_ == Kind::Number && (integer_ || number_ == std::floor(number_)), "field '", field,
                   "' must be a whole number, not ", kind_ == Kind::Number ? dump() : kind_name());
  return static_cast<int64_t>(number_);
}

const std::string& Json::as_string(const std::string& field) const {
  TORCH_CHECK_TYPE(kind_ == Kind::String, "field '", field, "' must be a string, not ", kind_name());
  return string_;
}

const std::vector<Json>& Json::as_array(const std::string& field) const {
  TORCH_CHECK_TYPE(kind_ == Kind::Array, "field '", field, "' must be a list, not ", kind_name());
  return array_;
}

const Json::Members& Json::as_object(const std::string& field) const {
  TORCH_CHECK_TYPE(kind_ == Kind::Object, "field '", field, "' must be an object, not ", kind_name());
  return object_;
}

const Json* Json::find(const std::string& key) const {
  if (kind_ != Kind::Object) return nullptr;
  for (const auto& [name, value] : object_)
    if (name == key) return &value;
  return nullptr;
}

void Json::set(const std::string& key, Json value) {
  TORCH_CHECK(kind_ == Kind::Object, "Json::set on ", kind_name());
  for (auto& [name, old] : object_) {
    if (name == key) {
      old = std::move(value);
      return;
    }
  }
  object_.emplace_back(key, std::move(value));
}

std::string Json::dump() const {
  std::string out;
  dump_value(*this, out);
  return out;
}

namespace {

void dump_value(const Json& value, std::string& out) {
  switch (value.kind()) {
    case Json::Kind::Null: out += "null"; return;
    case Json::Kind::Bool: out += value.as_bool("") ? "true" : "false"; return;
    case Json::Kind::Number: {
      const double number = value.as_double("");
      char buffer[32];
      if (number == std::floor(number) && std::abs(number) < 9007199254740992.0) {
        std::snprintf(buffer, sizeof(buffer), "%lld", static_cast<long long>(number));
        out += buffer;
        // A whole double (2.0) keeps a fraction so that Python reads it back as a float.
        if (!value.is_integer()) out += ".0";
      } else {
        // 17 significant digits read back to the same double (strtod here, float() in Python).
        std::snprintf(buffer, sizeof(buffer), "%.17g", number);
        out += buffer;
      }
      return;
    }
    case Json::Kind::String: dump_string(value.as_string(""), out); return;
    case Json::Kind::Array: {
      out += '[';
      bool first = true;
      for (const auto& item : value.as_array("")) {
        if (!first) out += ", ";
        first = false;
        dump_value(item, out);
      }
      out += ']';
      return;
    }
    case Json::Kind::Object: {
      out += '{';
      bool first = true;
      for (const auto& [key, item] : value.as_object("")) {
        if (!first) out += ", ";
        first = false;
        dump_string(key, out);
        out += ": ";
        dump_value(item, out);
      }
      out += '}';
      return;
    }
  }
}

}  // namespace
}  // namespace torchtl::io
