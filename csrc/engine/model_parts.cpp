#include "engine/model_parts.h"

#include "engine/choices.h"

namespace torchtl::engine {

ModelParts::ModelParts(const std::shared_ptr<torch::nn::Module>& model, const std::string& task) : root(model) {
  TORCH_CHECK_VALUE(model != nullptr, "fit/evaluate need a model");
  resnet = dynamic_cast<models::ResNetImpl*>(model.get());
  segmentation = dynamic_cast<models::SegmentationModelImpl*>(model.get());
  dense = dynamic_cast<segmentation_models::SegmentationModelImpl*>(model.get());
  if (task == "segmentation") {
    TORCH_CHECK_VALUE(segments(), "task='segmentation' needs an FCN, DeepLabV3 or segmentation_models_pytorch model, got ",
                      model->name());
    TORCH_CHECK_VALUE(!dense || !dense->classification_head, "fit/evaluate train ", model->name(),
                      "'s masks only, and this model also returns labels (aux_params): build it without aux_params, or "
                      "train its classification head from Python");
  } else {
    check_fit_choice("task", task);
    TORCH_CHECK_VALUE(!segments(), "a segmentation model needs task='segmentation'");
    forward_any = models::tensor_forward(model);
  }
}

torch::OrderedDict<std::string, torch::Tensor> ModelParts::segment(const torch::Tensor& x) const {
  if (segmentation) return segmentation->forward(x);
  torch::OrderedDict<std::string, torch::Tensor> out;
  out.insert("out", dense->forward(x));
  return out;
}

std::vector<std::shared_ptr<torch::nn::Module>> ModelParts::heads() const {
  std::vector<std::shared_ptr<torch::nn::Module>> out;
  for (const auto& child : root->named_children()) {
    const auto& name = child.key();
    if ((resnet && name == "fc") || (segmentation && (name == "classifier" || name == "aux_classifier")) ||
        (dense && name == "segmentation_head")) {
      out.push_back(child.value());
    }
  }
  return out;
}

bool ModelParts::all_finite() const {
  torch::NoGradGuard no_grad;
  for (const auto& p : root->parameters()) {
    if (!torch::isfinite(p).all().item<bool>()) return false;
  }
  for (const auto& b : root->buffers()) {
    if (b.is_floating_point() && !torch::isfinite(b).all().item<bool>()) return false;
  }
  return true;
}

std::set<const c10::TensorImpl*> parameters_of(const std::vector<std::shared_ptr<torch::nn::Module>>& modules) {
  std::set<const c10::TensorImpl*> out;
  for (const auto& m : modules) {
    for (const auto& p : m->parameters()) out.insert(p.unsafeGetTensorImpl());
  }
  return out;
}

}  // namespace torchtl::engine
