#include <torchtl/predict/predictor.h>

#include <iostream>

int main(int argc, char** argv) {
  torchtl::Predictor predictor(argv[1]);  // a model file: best.pt of a run, or torchtl.save_model's
  const std::vector<torchtl::ImageSource> images(argv + 2, argv + argc);
  const auto results = predictor.classify(images, /*topk=*/3);
  for (size_t i = 0; i < images.size(); ++i)
    for (const auto& p : results[i]) std::cout << argv[i + 2] << " " << p.label << " " << p.probability << "\n";
}
