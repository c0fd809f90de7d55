#include "segmentation_models/model.h"

#include <c10/util/Exception.h>

#include "models/fast_path.h"

namespace torchtl::segmentation_models {

namespace nn = torch::nn;

void SegmentationModelImpl::build(const CommonOptions& common, ResNetEncoder encoder_,
                                  std::shared_ptr<nn::Module> decoder_, SegmentationHead head, bool initialize) {
  encoder = register_module("encoder", encoder_);
  decoder = register_module("decoder", decoder_);
  decode_ = dynamic_cast<FeatureDecoder*>(decoder.get());
  TORCH_CHECK(decode_ != nullptr, "the decoder of ", name(), " does not decode features");
  segmentation_head = register_module("segmentation_head", head);
  head_ = models::tensor_forward(segmentation_head.ptr());
  if (common.aux_params()) {
    classification_head =
        register_module("classification_head", ClassificationHead(encoder->out_channels().back(), *common.aux_params()));
    classification_forward_ = models::tensor_forward(classification_head.ptr());
  }
  if (!initialize) return;
  initialize_decoder(*decoder);
  initialize_head(*segmentation_head);
  if (classification_head) initialize_head(*classification_head);
}

std::vector<torch::Tensor> SegmentationModelImpl::forward_all(const torch::Tensor& input) {
  TORCH_CHECK_VALUE(input.dim() == 4, name(), " expects an N x C x H x W batch, got shape ", input.sizes());
  if (requires_divisible_input_shape_) {
    const int64_t stride = encoder->output_stride();
    const int64_t h = input.size(2), w = input.size(3);
    // smp's check_input_shape raises RuntimeError with this text.
    TORCH_CHECK(h % stride == 0 && w % stride == 0, "Wrong input shape height=", h, ", width=", w,
                ". Expected image height and width divisible by ", stride, ". Consider pad your images to shape (",
                h % stride ? (h / stride + 1) * stride : h, ", ", w % stride ? (w / stride + 1) * stride : w, ").");
  }
  const auto x = models::to_fast_layout(input);
  const auto features = encoder->forward(x);
  std::vector<torch::Tensor> out{models::to_caller_layout(head_(decode_->decode(features)), input)};
  if (classification_head) out.push_back(classification_forward_(features.back()));
  return out;
}

void SegmentationModelImpl::replace_child(const std::string& name, std::shared_ptr<nn::Module>) {
  // ValueError: the Python face then runs the replacement in Python.
  TORCH_CHECK_VALUE(false, this->name(), " has no child '", name, "' that C++ can replace");
}

}  // namespace torchtl::segmentation_models
