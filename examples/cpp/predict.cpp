// Predicts on image files with a model file alone (best.pt of `torchtl train`, engine.fit or the C++
// training programs, or torchtl.save_model's file): its metadata names the model, the class names
// and the evaluation transform, so nothing else needs to be told.
//
//   predict --checkpoint best.pt cat.jpg photos/ --topk 3           # classification: top-k lines
//   predict --checkpoint seg/best.pt street.png --out predictions   # segmentation: mask + overlay PNGs
//   predict --checkpoint best.pt val.txt --json                     # a map file's images, JSON lines
//
// Inputs are image files, folders (their images, as ImageFolder finds them, sorted) and map files
// (their first column). The output is what `torchtl predict` prints for the same files.
#include <torch/torch.h>

#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>

#include "cli.h"
#include "data/image.h"
#include "data/map_file.h"
#include "io/json.h"
#include "predict/overlay.h"
#include "predict/predictor.h"

namespace data = torchtl::data;
namespace examples = torchtl::examples;
namespace fs = std::filesystem;
namespace io = torchtl::io;

namespace {

struct Args {
  std::vector<std::string> inputs;
  std::string checkpoint, out = "predictions", device;
  int64_t topk = 5, batch_size = 8, workers = 2;
  bool json = false;
};

bool is_image(const fs::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  const auto& known = data::image_extensions();
  return std::find(known.begin(), known.end(), ext) != known.end();
}

// Files, folders and map files -> image paths, in the order given.
std::vector<std::string> image_paths(const std::vector<std::string>& inputs, const std::string& task) {
  std::vector<std::string> out;
  for (const auto& input : inputs) {
    std::error_code ec;
    if (fs::is_directory(input, ec)) {
      std::vector<std::string> inside;
      for (const auto& entry : fs::recursive_directory_iterator(input, fs::directory_options::follow_directory_symlink))
        if (entry.is_regular_file() && is_image(entry.path())) inside.push_back(entry.path().string());
      std::sort(inside.begin(), inside.end());
      TORCH_CHECK_VALUE(!inside.empty(), "no images in folder '", input, "'");
      out.insert(out.end(), inside.begin(), inside.end());
    } else if (!fs::exists(input, ec)) {
      throw data::FileNotFoundError("image '" + input + "' does not exist");
    } else if (is_image(input)) {
      out.push_back(input);
    } else {
      // Not an image by its name: a map file, whose first column lists images.
      const auto kind = task == "segmentation" ? data::MapKind::Segmentation : data::MapKind::Classification;
      for (const auto& entry : data::read_map_file(input, data::MapFileOptions().kind(kind)).entries) out.push_back(entry.path);
    }
  }
  return out;
}

void classify(const torchtl::Predictor& predictor, const std::vector<std::string>& paths, const Args& args) {
  const std::vector<torchtl::ImageSource> images(paths.begin(), paths.end());
  const auto results = predictor.classify(images, args.topk);
  for (size_t i = 0; i < paths.size(); ++i) {
    if (args.json) {
      std::vector<io::Json> predictions;
      for (const auto& p : results[i]) {
        predictions.push_back(io::Json::object(
            {{"index", io::Json(p.index)}, {"label", io::Json(p.label)}, {"probability", io::Json(p.probability)}}));
      }
      std::cout << io::Json::object({{"image", io::Json(paths[i])}, {"predictions", io::Json::array(predictions)}}).dump()
                << "\n";
      continue;
    }
    std::cout << paths[i] << ":";
    for (size_t k = 0; k < results[i].size(); ++k) {
      std::cout << (k ? ", " : " ") << results[i][k].label << " " << std::fixed << std::setprecision(3)
                << results[i][k].probability;
    }
    std::cout << "\n";
  }
}

void segment(const torchtl::Predictor& predictor, const std::vector<std::string>& paths, const Args& args) {
  // Every output is checked before anything is written: two images of one name, or an earlier
  // run's files, stop the run.
  std::map<std::string, std::string> stems;
  for (const auto& path : paths) {
    const auto stem = fs::path(path).stem().string();
    if (stems.count(stem)) {
      throw examples::UsageError(stems[stem] + " and " + path + " would both write " + stem + "_mask.png into " + args.out);
    }
    stems[stem] = path;
    for (const char* suffix : {"_mask.png", "_overlay.png"}) {
      const auto earlier = (fs::path(args.out) / (stem + suffix)).string();
      if (fs::exists(earlier)) {
        throw examples::UsageError(earlier + " exists (an earlier predict wrote it?); it is never overwritten: "
                                   "choose another --out or move it away");
      }
    }
  }
  const std::vector<torchtl::ImageSource> images(paths.begin(), paths.end());
  const auto masks = predictor.segment(images);
  fs::create_directories(args.out);
  for (size_t i = 0; i < paths.size(); ++i) {
    const auto stem = (fs::path(args.out) / fs::path(paths[i]).stem()).string();
    const auto& mask = masks[i];
    data::write_png(mask.to(torch::kUInt8).unsqueeze(0), stem + "_mask.png");
    data::write_png(torchtl::predict::overlay_mask(data::read_image(paths[i]), mask), stem + "_overlay.png");
    const auto counts = torch::bincount(mask.flatten());
    if (args.json) {
      std::vector<io::Json> pixels;
      for (int64_t c = 0; c < counts.size(0); ++c) pixels.emplace_back(counts[c].item<int64_t>());
      std::cout << io::Json::object({{"image", io::Json(paths[i])}, {"mask", io::Json(stem + "_mask.png")},
                                     {"overlay", io::Json(stem + "_overlay.png")},
                                     {"pixels", io::Json::array(pixels)}})
                       .dump()
                << "\n";
      continue;
    }
    std::ostringstream share;
    for (int64_t c = 0; c < counts.size(0); ++c) {
      const auto n = counts[c].item<int64_t>();
      if (n == 0) continue;
      share << (share.tellp() > 0 ? ", " : "") << "class " << c << " " << std::fixed << std::setprecision(1)
            << 100.0 * static_cast<double>(n) / static_cast<double>(mask.numel()) << "%";
    }
    std::cout << paths[i] << ": wrote " << stem << "_mask.png (class indices) and " << stem << "_overlay.png ("
              << share.str() << ")\n";
  }
}

int run(const Args& args) {
  std::optional<torch::Device> device;
  if (!args.device.empty()) device = torch::Device(args.device);
  const torchtl::Predictor predictor(args.checkpoint, device,
                                     torchtl::PredictorOptions().batch_size(args.batch_size).num_workers(args.workers));
  const auto paths = image_paths(args.inputs, predictor.task());
  if (predictor.task() == "classification") classify(predictor, paths, args);
  else segment(predictor, paths, args);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  // The names and defaults of `torchtl predict` (tests/cpp/cli_defaults.py checks them).
  examples::Options options("predict --checkpoint MODEL_FILE IMAGE|FOLDER|MAP_FILE... [options]",
                            "Top-k classes, or a class-index mask and an overlay PNG, for images, from a model file alone.");
  options.positionals(&args.inputs);
  options.text("--checkpoint", &args.checkpoint,
               "model file: best.pt of a train run or torchtl.save_model's file (required)");
  options.integer("--topk", &args.topk, 1, "classes printed per image (at most all)");
  options.text("--out", &args.out, "segmentation: folder for <image>_mask.png (class indices) and <image>_overlay.png");
  options.flag("--json", &args.json, "one JSON object a line instead of text");
  options.integer("-b,--batch-size", &args.batch_size, 1, "images per model call (classification)");
  options.integer("-j,--workers", &args.workers, 0, "C++ loader threads that decode while the model runs");
  options.text("--device", &args.device, "cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)");
  const auto check = [&] {
    if (args.checkpoint.empty()) throw examples::UsageError("--checkpoint is required");
    if (args.inputs.empty()) throw examples::UsageError("give at least one image, folder or map file");
  };
  return examples::main_of("predict", options, argc, argv, check, [&] { return run(args); });
}
