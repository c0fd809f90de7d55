// Map files: every bad line is reported at once, by line number, with the right error type.
#include <torch/torch.h>

#include <fstream>

#include "data/map_file.h"
#include "harness.h"

namespace data = torchtl::data;
using torchtl::testing::contains;
using torchtl::testing::scratch_path;

namespace {

std::string write(const std::string& name, const std::string& text) {
  const auto path = scratch_path(name);
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

// An empty file that a map file can list.
std::string touch(const std::string& name) { return write(name, ""); }

}  // namespace

TORCHTL_TEST(reads_paths_labels_and_line_numbers) {
  touch("a.png");
  touch("b c.png");
  const auto path = write("good.txt", "\xEF\xBB\xBF# comment\r\na.png\t0\r\n\r\nb c.png\t 3 \n");
  const auto map = data::read_map_file(path);
  EXPECT(map.entries.size() == 2) << map.entries.size();
  EXPECT(map.entries[0].label == 0 && map.entries[0].line == 2) << map.entries[0].label << " " << map.entries[0].line;
  EXPECT(map.entries[1].label == 3 && map.entries[1].line == 4) << map.entries[1].label << " " << map.entries[1].line;
  EXPECT(map.entries[1].path == scratch_path("b c.png")) << map.entries[1].path;
}

TORCHTL_TEST(every_bad_line_is_named_in_one_error) {
  touch("a.png");
  const auto path = write("bad.txt",
                          "a.png\t0\n"
                          "a.png 1\n"            // 2: spaces, not a tab
                          "a.png\tcat\n"         // 3: not an integer
                          "a.png\t-1\n"          // 4: negative
                          "a.png\t7\n"           // 5: >= num_classes
                          "\t1\n"                // 6: empty path
                          "missing.png\t1\n"     // 7: no such file
                          "a.png\t1\textra\n");  // 8: three fields
  bool value_error = false;
  std::string message;
  try {
    data::read_map_file(path, data::MapFileOptions().num_classes(5));
  } catch (const c10::ValueError& e) {
    value_error = true;
    message = e.what_without_backtrace();
  }
  EXPECT(value_error) << "expected a ValueError";
  EXPECT(contains(message, "has 7 bad lines")) << message;
  for (const auto& part : {"line 2: expected 2 tab-separated fields (path<TAB>label), found 1",
                           "line 3: label 'cat' is not an integer", "line 4: label -1 is negative",
                           "line 5: label 7 is out of range for num_classes=5", "line 6: empty image path",
                           "line 7: image '", "line 8: expected 2 tab-separated fields (path<TAB>label), found 3"}) {
    EXPECT(contains(message, part)) << "no '" << part << "' in:\n" << message;
  }
  EXPECT(!contains(message, "line 1:")) << message;
}

TORCHTL_TEST(only_missing_files_is_a_file_not_found_error) {
  const auto path = write("missing.txt", "x.png\t0\n\ny.png\t1\n");
  bool not_found = false;
  std::string message;
  try {
    data::read_map_file(path);
  } catch (const data::FileNotFoundError& e) {
    not_found = true;
    message = e.what_without_backtrace();
  }
  EXPECT(not_found) << "expected FileNotFoundError";
  EXPECT(contains(message, "line 1: image '" + scratch_path("x.png") + "' does not exist")) << message;
  EXPECT(contains(message, "line 3: image '" + scratch_path("y.png") + "' does not exist")) << message;
}

TORCHTL_TEST(segmentation_lines_need_an_existing_mask) {
  touch("i.png");
  touch("m.png");
  const auto path = write("seg.txt", "i.png\tm.png\ni.png\n#\ni.png\tnone.png\n");
  const auto message =
      THROWN_MESSAGE(data::read_map_file(path, data::MapFileOptions().kind(data::MapKind::Segmentation)));
  EXPECT(contains(message, "line 2: expected 2 tab-separated fields (image<TAB>mask), found 1")) << message;
  EXPECT(contains(message, "line 4: mask '" + scratch_path("none.png") + "' does not exist")) << message;
}

TORCHTL_TEST(skip_bad_lines_keeps_the_good_ones) {
  touch("a.png");
  const auto path = write("skip.txt", "a.png\t0\na.png\tx\na.png\t1\n");
  const auto map = data::read_map_file(path, data::MapFileOptions().skip_bad_lines(true));
  EXPECT(map.entries.size() == 2) << map.entries.size();
  EXPECT(map.skipped.size() == 1 && contains(map.skipped[0], "line 2: label 'x'")) << map.skipped.size();
}

TORCHTL_TEST(missing_and_empty_map_files) {
  bool not_found = false;
  try {
    data::read_map_file(scratch_path("no_such_map.txt"));
  } catch (const data::FileNotFoundError& e) {
    not_found = contains(e.what_without_backtrace(), "no_such_map.txt' does not exist");
  }
  EXPECT(not_found) << "expected FileNotFoundError naming the map file";
  const auto empty = write("empty.txt", "# nothing\n\n");
  EXPECT(contains(THROWN_MESSAGE(data::read_map_file(empty)), "lists no samples"));
}
