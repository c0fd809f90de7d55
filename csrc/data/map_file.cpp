#include "data/map_file.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <fstream>
#include <sstream>

#include <unistd.h>

namespace fs = std::filesystem;

namespace torchtl::data {
namespace {

// More than this many bad lines are summarised by count: a broken 1M-line file must not
// produce a 1M-line exception.
constexpr size_t kMaxListedErrors = 50;

// Longer fields are cut in error messages: a binary file read as a map file has "lines" of any
// length.
constexpr size_t kMaxShownField = 80;

std::string read_all(const std::string& path) {
  std::error_code ec;
  // An ifstream opens a folder without complaint and reads nothing from it.
  if (fs::is_directory(path, ec)) {
    throw IsADirectoryError("map file '" + printable(path) + "' is a directory; pass the map file inside it");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (!fs::exists(path, ec)) throw FileNotFoundError("map file '" + printable(path) + "' does not exist");
    TORCH_CHECK(false, "map file '", printable(path), "' cannot be opened");
  }
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::string shown(const std::string& field) {
  if (field.size() <= kMaxShownField) return printable(field);
  return printable(field.substr(0, kMaxShownField)) + "...";
}

std::string resolve(const fs::path& folder, const std::string& field) {
  fs::path p(field);
  if (p.is_absolute() || folder.empty()) return p.lexically_normal().string();
  return (folder / p).lexically_normal().string();
}

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

std::vector<std::string> split_tabs(const std::string& line) {
  std::vector<std::string> fields;
  size_t start = 0;
  while (true) {
    size_t tab = line.find('\t', start);
    fields.push_back(line.substr(start, tab == std::string::npos ? std::string::npos : tab - start));
    if (tab == std::string::npos) break;
    start = tab + 1;
  }
  return fields;
}

bool is_regular_file(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

constexpr const char* kMissing = "does not exist";

// Why `path` cannot be read as a sample file, or nullopt when it can.
std::optional<std::string> not_a_file(const std::string& path) {
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (fs::is_regular_file(status)) return std::nullopt;
  if (fs::is_directory(status)) return std::string("is a directory");
  return std::string(kMissing);
}

bool lower_ends_with(std::string name, const std::string& suffix) {
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool has_image_extension(const std::string& name) {
  for (const auto& ext : image_extensions()) {
    if (lower_ends_with(name, ext)) return true;
  }
  return false;
}

// The path as it goes into a map file: relative to the map file's folder when both live on the
// same tree, so the data and its map can move together.
std::string map_path_field(const fs::path& file, const fs::path& map_folder) {
  auto absolute = fs::absolute(file).lexically_normal();
  auto relative = absolute.lexically_relative(fs::absolute(map_folder).lexically_normal());
  auto out = relative.empty() ? absolute.string() : relative.string();
  TORCH_CHECK_VALUE(out.find('\t') == std::string::npos && out.find('\n') == std::string::npos &&
                        out.find('\r') == std::string::npos,
                    "'", printable(file.string()), "' has a tab or line break in its name, which a map file cannot hold");
  return out;
}

void write_text(const std::string& path, const std::string& text) {
  auto parent = fs::path(path).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  TORCH_CHECK(out, "cannot write '", printable(path), "'");
  out << text;
  out.close();
  TORCH_CHECK(!out.fail(), "error while writing '", printable(path), "'");
}

// Each file goes to a temporary name first and is renamed over its target only once all are
// written, so a failed write (disk full, a bad name) leaves the earlier files as they were.
// The last file renamed is the one readers open first (the map file).
void write_files(const std::vector<std::pair<std::string, std::string>>& files) {
  std::vector<std::string> temporaries;
  try {
    for (const auto& [path, text] : files) {
      std::error_code ec;
      if (fs::is_directory(path, ec)) throw IsADirectoryError("'" + printable(path) + "' is a directory, not a file");
      temporaries.push_back(path + ".tmp" + std::to_string(::getpid()));
      write_text(temporaries.back(), text);
    }
    for (size_t i = 0; i < files.size(); ++i) fs::rename(temporaries[i], files[i].first);
  } catch (...) {
    std::error_code ec;
    for (const auto& tmp : temporaries) fs::remove(tmp, ec);
    throw;
  }
}

}  // namespace

std::string printable(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  auto escape = [&](unsigned char c) {
    char buf[5];
    std::snprintf(buf, sizeof buf, "\\x%02x", c);
    out += buf;
  };
  for (size_t i = 0; i < n;) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      if (c < 0x20 || c == 0x7f) {
        escape(c);
      } else {
        out += static_cast<char>(c);
      }
      ++i;
      continue;
    }
    // A well-formed UTF-8 sequence (RFC 3629: no overlong forms, no surrogates, <= U+10FFFF) is
    // kept; any other byte is escaped on its own, as Python's "backslashreplace" does.
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    }
    bool ok = len > 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) {
      const unsigned char b = s[i + k];
      ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    }
    if (ok) {
      out.append(text, i, len);
      i += len;
    } else {
      escape(c);
      ++i;
    }
  }
  return out;
}

const std::vector<std::string>& image_extensions() {
  // torchvision.datasets.folder.IMG_EXTENSIONS, in its order, so a map file lists what ImageFolder
  // lists (tests/test_cli.py checks); a file torchvision's decoder cannot read fails naming its path.
  static const std::vector<std::string> extensions{".jpg", ".jpeg", ".png", ".ppm", ".bmp",
                                                   ".pgm", ".tif",  ".tiff", ".webp"};
  return extensions;
}

std::string where_in_map_file(const MapFile& map, const MapEntry& entry) {
  return "map file '" + printable(map.path) + "', line " + std::to_string(entry.line);
}

MapFile read_map_file(const std::string& path, const MapFileOptions& options) {
  MapFile map;
  map.path = path;
  std::string text = read_all(path);
  if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);
  // Windows editors save "Unicode" text as UTF-16 with a byte-order mark; read as bytes, every
  // line of it would be a bad line.
  const bool utf16 = text.compare(0, 2, "\xFF\xFE") == 0 || text.compare(0, 2, "\xFE\xFF") == 0;
  TORCH_CHECK_VALUE(!utf16, "map file '", printable(path),
                    "' is UTF-16 (or UTF-32) text; map files are UTF-8: save it as UTF-8");
  const fs::path folder = fs::path(path).parent_path();
  const bool segmentation = options.kind() == MapKind::Segmentation;

  std::vector<std::string> errors;
  bool all_missing = true;
  auto bad = [&](int64_t line, const std::string& why, bool missing) {
    errors.push_back("line " + std::to_string(line) + ": " + why);
    all_missing = all_missing && missing;
  };

  std::istringstream lines(text);
  std::string line;
  int64_t number = 0;
  while (std::getline(lines, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const std::string stripped = trim(line);
    if (stripped.empty() || stripped[0] == '#') continue;

    if (line.find('\0') != std::string::npos) {
      // A NUL would silently cut the path short where the file system reads it.
      bad(number, "holds a NUL byte; is this a text file?", false);
      continue;
    }
    auto fields = split_tabs(line);
    if (fields.size() != 2) {
      bad(number,
          "expected 2 tab-separated fields (" + std::string(segmentation ? "image<TAB>mask" : "path<TAB>label") +
              "), found " + std::to_string(fields.size()),
          false);
      continue;
    }
    MapEntry entry;
    entry.line = number;
    if (fields[0].empty()) {
      bad(number, "empty image path", false);
      continue;
    }
    entry.path = resolve(folder, fields[0]);
    bool ok = true;
    if (segmentation) {
      if (fields[1].empty()) {
        bad(number, "empty mask path", false);
        continue;
      }
      entry.target = resolve(folder, fields[1]);
    } else {
      const std::string label = trim(fields[1]);
      int64_t value = 0;
      auto [end, ec] = std::from_chars(label.data(), label.data() + label.size(), value);
      if (label.empty() || ec != std::errc() || end != label.data() + label.size()) {
        bad(number, "label '" + shown(label) + "' is not an integer", false);
        ok = false;
      } else if (value < 0) {
        bad(number, "label " + shown(label) + " is negative", false);
        ok = false;
      } else if (options.num_classes() > 0 && value >= options.num_classes()) {
        bad(number, "label " + shown(label) + " is out of range for num_classes=" + std::to_string(options.num_classes()),
            false);
        ok = false;
      }
      entry.label = value;
    }
    if (auto why = not_a_file(entry.path)) {
      bad(number, "image '" + shown(entry.path) + "' " + *why, *why == kMissing);
      ok = false;
    }
    if (segmentation) {
      if (auto why = not_a_file(entry.target)) {
        bad(number, "mask '" + shown(entry.target) + "' " + *why, *why == kMissing);
        ok = false;
      }
    }
    if (ok) map.entries.push_back(std::move(entry));
  }

  if (!errors.empty() && options.skip_bad_lines()) {
    map.skipped = std::move(errors);
  } else if (!errors.empty()) {
    std::ostringstream msg;
    msg << "map file '" << printable(path) << "' has " << errors.size() << " bad line" << (errors.size() == 1 ? "" : "s") << ":";
    for (size_t i = 0; i < errors.size() && i < kMaxListedErrors; ++i) msg << "\n  " << errors[i];
    if (errors.size() > kMaxListedErrors) msg << "\n  ... and " << errors.size() - kMaxListedErrors << " more";
    if (all_missing) throw FileNotFoundError(msg.str());
    TORCH_CHECK_VALUE(false, msg.str());
  }
  TORCH_CHECK_VALUE(!map.entries.empty(), "map file '", printable(path), "' lists no samples");
  return map;
}

int64_t write_image_folder_map(const std::string& root, const std::string& map_path, const std::string& classes_path) {
  if (!fs::is_directory(root)) throw FileNotFoundError("image folder '" + printable(root) + "' does not exist");
  TORCH_CHECK_VALUE(fs::path(map_path).lexically_normal() != fs::path(classes_path).lexically_normal(),
                    "the classes file and the map file are the same file '", printable(map_path), "'");
  // torchvision's find_classes: sorted directory names (code-point order, which byte order of
  // UTF-8 preserves); make_dataset: sorted os.walk with symlinks followed, names sorted.
  std::vector<std::string> classes;
  for (const auto& entry : fs::directory_iterator(root)) {
    if (entry.is_directory()) classes.push_back(entry.path().filename().string());
  }
  std::sort(classes.begin(), classes.end());
  TORCH_CHECK_VALUE(!classes.empty(), "image folder '", printable(root), "' has no class folders");

  const fs::path map_folder = fs::path(map_path).parent_path().empty() ? fs::path(".") : fs::path(map_path).parent_path();
  std::ostringstream map_text, classes_text;
  int64_t count = 0;
  std::vector<std::string> empty_classes;
  for (size_t label = 0; label < classes.size(); ++label) {
    std::vector<std::string> files;
    auto options = fs::directory_options::follow_directory_symlink;
    for (const auto& entry : fs::recursive_directory_iterator(fs::path(root) / classes[label], options)) {
      if (entry.is_regular_file() && has_image_extension(entry.path().filename().string())) {
        files.push_back(entry.path().string());
      }
    }
    // make_dataset iterates sorted(os.walk(...)) and then sorted(fnames): by folder, then name.
    std::sort(files.begin(), files.end(), [](const std::string& a, const std::string& b) {
      fs::path pa(a), pb(b);
      auto da = pa.parent_path().string(), db = pb.parent_path().string();
      return da != db ? da < db : pa.filename().string() < pb.filename().string();
    });
    if (files.empty()) empty_classes.push_back(classes[label]);
    for (const auto& file : files) {
      map_text << map_path_field(file, map_folder) << '\t' << label << '\n';
      ++count;
    }
    classes_text << classes[label] << '\n';
  }
  // torchvision's ImageFolder refuses empty class folders too (allow_empty=False).
  if (!empty_classes.empty()) {
    std::ostringstream names;
    for (size_t i = 0; i < empty_classes.size(); ++i) names << (i ? ", " : "") << printable(empty_classes[i]);
    std::string listed;
    for (const auto& ext : image_extensions()) listed += (listed.empty() ? "" : ", ") + ext.substr(1);
    TORCH_CHECK_VALUE(false, "image folder '", printable(root), "': no images (", listed, ") in class folder",
                      empty_classes.size() == 1 ? " " : "s ", names.str());
  }
  write_files({{classes_path, classes_text.str()}, {map_path, map_text.str()}});
  return count;
}

int64_t write_voc_map(const std::string& root, const std::string& split, const std::string& map_path) {
  const fs::path base(root);
  const std::string list = (base / "ImageSets" / "Segmentation" / (split + ".txt")).string();
  if (!is_regular_file(list)) throw FileNotFoundError("VOC split list '" + printable(list) + "' does not exist");
  const fs::path map_folder = fs::path(map_path).parent_path().empty() ? fs::path(".") : fs::path(map_path).parent_path();

  std::ifstream in(list);
  std::string id;
  std::ostringstream map_text;
  std::vector<std::string> missing;
  int64_t count = 0;
  while (std::getline(in, id)) {
    id = trim(id);
    if (id.empty()) continue;
    auto image = base / "JPEGImages" / (id + ".jpg");
    auto mask = base / "SegmentationClass" / (id + ".png");
    bool ok = true;
    for (const auto& p : {image, mask}) {
      if (!is_regular_file(p.string())) {
        missing.push_back(p.string());
        ok = false;
      }
    }
    if (!ok) continue;
    map_text << map_path_field(image, map_folder) << '\t' << map_path_field(mask, map_folder) << '\n';
    ++count;
  }
  if (!missing.empty()) {
    std::ostringstream msg;
    msg << "VOC split '" << printable(list) << "' lists " << missing.size() << " missing file" << (missing.size() == 1 ? "" : "s")
        << ":";
    for (size_t i = 0; i < missing.size() && i < kMaxListedErrors; ++i) msg << "\n  " << printable(missing[i]);
    if (missing.size() > kMaxListedErrors) msg << "\n  ... and " << missing.size() - kMaxListedErrors << " more";
    throw FileNotFoundError(msg.str());
  }
  TORCH_CHECK_VALUE(count > 0, "VOC split list '", printable(list), "' lists no ids");
  write_files({{map_path, map_text.str()}});
  return count;
}

std::string classes_path_for(const std::string& map_path) {
  const fs::path path(map_path);
  return (path.parent_path() / (path.stem().string() + "_classes" + path.extension().string())).string();
}

std::optional<std::vector<std::string>> read_map_classes(const std::string& map_path) {
  const auto path = classes_path_for(map_path);
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::vector<std::string> classes;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) classes.push_back(line);
  }
  return classes;
}

}  // namespace torchtl::data
