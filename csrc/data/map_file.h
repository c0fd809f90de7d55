#pragma once
// Map files: sample lists, one `path<TAB>label` (classification) or `image<TAB>mask`
// (segmentation) per line. A map file is validated as a whole when it is read, so a user sees
// every bad line at once instead of one crash per run.
#include <torch/arg.h>
#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace torchtl::data {

// Thrown for a file that does not exist; Python sees FileNotFoundError.
class FileNotFoundError : public c10::Error {
 public:
  explicit FileNotFoundError(std::string msg) : c10::Error(std::move(msg)) {}
};

// Thrown where a file is expected but a folder is found; Python sees IsADirectoryError.
class IsADirectoryError : public c10::Error {
 public:
  explicit IsADirectoryError(std::string msg) : c10::Error(std::move(msg)) {}
};

// Paths are bytes on Linux and a map file holds them as the file system stores them, so they
// need not be UTF-8 (Python shows them as os.fsdecode does). Every error message shows a path or
// field through printable(): bytes that are not valid UTF-8, and control characters, as \xNN.
std::string printable(const std::string& text);

enum class MapKind { Classification, Segmentation };

struct MapEntry {
  std::string path;    // resolved: absolute, or relative to the working directory as given
  std::string target;  // segmentation: the mask path (resolved); classification: empty
  int64_t label = -1;  // classification: the class index; segmentation: -1
  int64_t line = 0;    // 1-based line in the map file
};

struct MapFileOptions {
  TORCH_ARG(MapKind, kind) = MapKind::Classification;
  // Labels must be < num_classes when it is positive.
  TORCH_ARG(int64_t, num_classes) = -1;
  // Drop bad lines (returned in MapFile::skipped) instead of throwing.
  TORCH_ARG(bool, skip_bad_lines) = false;
};

struct MapFile {
  std::string path;
  std::vector<MapEntry> entries;
  std::vector<std::string> skipped;  // "line N: reason", only with skip_bad_lines
};

// Reads and validates a map file. Paths are relative to the map file's folder unless absolute;
// blank lines and lines starting with '#' are skipped; CRLF line ends and a UTF-8 BOM are
// accepted; fields are split on tabs only, so paths may contain spaces. Throws one error that
// lists every bad line (FileNotFoundError when all of them are missing files, else ValueError);
// IsADirectoryError when `path` is a folder, ValueError for UTF-16/32 text.
MapFile read_map_file(const std::string& path, const MapFileOptions& options = {});

// "map file 'x', line N": the prefix of every error about an entry, so messages read the same everywhere.
std::string where_in_map_file(const MapFile& map, const MapEntry& entry);

// The extensions write_image_folder_map lists: ImageFolder's (torchvision.datasets.folder.IMG_EXTENSIONS).
const std::vector<std::string>& image_extensions();

// ImageFolder tree (root/class_x/xxx.jpg) -> map file + classes file (one class name a line,
// line i = class i). Classes and files are sorted as torchvision.datasets.ImageFolder sorts
// them, so label i means the same class in both. Paths are written relative to the map file's
// folder when possible. Both files are written whole or not at all (a temporary file renamed
// over the old one). Returns the number of samples written.
int64_t write_image_folder_map(const std::string& root, const std::string& map_path, const std::string& classes_path);

// The classes file torchtl.data.write_map_file writes beside `map_path` (train.txt ->
// train_classes.txt, val.tsv -> val_classes.tsv: torchtl.data.classes_path_for), and its class
// names, one a line; nothing when there is no such file. What a C++ program records in its
// model file's metadata.
std::string classes_path_for(const std::string& map_path);
std::optional<std::vector<std::string>> read_map_classes(const std::string& map_path);

// VOC tree (JPEGImages/<id>.jpg, SegmentationClass/<id>.png, ImageSets/Segmentation/<split>.txt)
// -> `image<TAB>mask` map file. Every listed id must have both files. Returns the count.
int64_t write_voc_map(const std::string& root, const std::string& split, const std::string& map_path);

}  // namespace torchtl::data
