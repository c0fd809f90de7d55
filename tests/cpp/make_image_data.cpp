// Writes a tiny image data set for the example programs' ctest runs, with TorchCodec's PNG
// encoder (loaded the way every C++ program of torchtl loads TorchCodec's image ops), so the
// tests need no Python:
//
//   make_image_data DIR
//
// DIR/train.txt, DIR/val.txt: `images/N.png<TAB>label`, two classes that differ in colour (red vs
//                             blue, with noise), so one epoch can learn something.
// DIR/seg_train.txt, DIR/seg_val.txt: `images/N.png<TAB>masks/N.png`, gray masks with classes 0..2
//                             (a square of class 1 or 2 on background 0) and a 255 border.
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <iostream>

#include "data/image.h"

namespace fs = std::filesystem;

namespace {

void write_png(const torch::Tensor& image, const fs::path& path) { torchtl::data::write_png(image, path.string()); }

// 3 x size x size: a red (label 0) or blue (label 1) picture with noise.
torch::Tensor classification_image(int64_t label, int64_t size) {
  auto image = torch::randint(0, 80, {3, size, size}, torch::kUInt8);
  image[label == 0 ? 0 : 2].add_(150);
  return image;
}

void write_lines(const fs::path& path, const std::vector<std::string>& lines) {
  std::ofstream out(path);
  for (const auto& line : lines) out << line << "\n";
  TORCH_CHECK(out.good(), "cannot write '", path.string(), "'");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_image_data DIR\n";
    return 2;
  }
  try {
    const fs::path root(argv[1]);
    fs::create_directories(root / "images");
    fs::create_directories(root / "masks");
    torchtl::data::load_image_ops();
    torch::manual_seed(0);

    const int64_t size = 48;
    std::vector<std::string> train, val, seg_train, seg_val;
    for (int64_t n = 0; n < 12; ++n) {
      const int64_t label = n % 2;
      const auto name = std::to_string(n) + ".png";
      write_png(classification_image(label, size), root / "images" / name);

      // Masks follow the image's colour, so the segmentation data is learnable too.
      auto mask = torch::zeros({1, size, size}, torch::kUInt8);
      mask.index_put_({0, torch::indexing::Slice(12, 36), torch::indexing::Slice(12, 36)}, label + 1);
      mask.index_put_({0, 0}, 255);
      write_png(mask, root / "masks" / name);

      const auto line = "images/" + name + "\t" + std::to_string(label);
      const auto seg_line = "images/" + name + "\tmasks/" + name;
      (n < 8 ? train : val).push_back(line);
      (n < 8 ? seg_train : seg_val).push_back(seg_line);
    }
    write_lines(root / "train.txt", train);
    write_lines(root / "val.txt", val);
    write_lines(root / "seg_train.txt", seg_train);
    write_lines(root / "seg_val.txt", seg_val);
    std::cout << "wrote 12 images, 12 masks and 4 map files to " << root.string() << "\n";
    return 0;
  } catch (const c10::Error& e) {
    std::cerr << "make_image_data: error: " << e.what_without_backtrace() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "make_image_data: error: " << e.what() << "\n";
  }
  return 1;
}
