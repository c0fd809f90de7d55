// make_model(): every architecture from smp's argument names, for callers that hold a name and a
// dict (the Python builders, model files, the segmentation program).
#include <c10/util/Exception.h>

#include <set>

#include "segmentation_models/model.h"
#include "segmentation_models/deeplabv3plus.h"
#include "segmentation_models/fpn.h"
#include "segmentation_models/linknet.h"
#include "segmentation_models/pan.h"
#include "segmentation_models/pspnet.h"
#include "segmentation_models/unetplusplus.h"
#include "segmentation_models/unet.h"

namespace torchtl::segmentation_models {

namespace {

// Reads arguments by name and type; whatever is left unread at the end is an error.
class ArgumentReader {
 public:
  ArgumentReader(std::string arch, const Arguments& arguments) : arch_(std::move(arch)), arguments_(arguments) {}

  template <typename T>
  void read(const std::string& name, T& value) {
    auto it = arguments_.find(name);
    if (it == arguments_.end()) return;
    used_.insert(name);
    if constexpr (std::is_same_v<T, double>) {
      if (std::holds_alternative<int64_t>(it->second)) {
        value = static_cast<double>(std::get<int64_t>(it->second));
        return;
      }
    }
    using Stored = std::conditional_t<std::is_same_v<T, std::optional<std::string>>, std::string, T>;
    TORCH_CHECK_TYPE(std::holds_alternative<Stored>(it->second), arch_, ": argument '", name, "' has the wrong type");
    value = std::get<Stored>(it->second);
  }

  bool has_prefix(const std::string& prefix) const {
    for (const auto& [name, value] : arguments_) {
      if (name.rfind(prefix, 0) == 0) return true;
    }
    return false;
  }

  void read_common(CommonOptions& o) {
    read("encoder_name", o.encoder_name());
    read("encoder_depth", o.encoder_depth());
    read("encoder_pretrained", o.encoder_pretrained());
    read("in_channels", o.in_channels());
    read("classes", o.classes());
    read("activation", o.activation());
    if (has_prefix("aux_params.")) {
      int64_t classes = 1;
      read("aux_params.classes", classes);
      ClassificationHeadOptions aux(classes);
      read("aux_params.pooling", aux.pooling());
      read("aux_params.dropout", aux.dropout());
      read("aux_params.activation", aux.activation());
      o.aux_params(aux);
    }
  }

  void finish() const {
    for (const auto& [name, value] : arguments_) {
      TORCH_CHECK_VALUE(used_.count(name), arch_, "() got an unexpected keyword argument '", name, "'");
    }
  }

 private:
  std::string arch_;
  const Arguments& arguments_;
  std::set<std::string> used_;
};

// Unet and UnetPlusPlus take the same arguments (smp's UnetPlusPlus reuses Unet's decoder blocks).
template <typename Options>
void read_unet_arguments(ArgumentReader& reader, Options& o) {
  reader.read_common(o);
  reader.read("decoder_use_norm", o.decoder_use_norm());
  reader.read("decoder_channels", o.decoder_channels());
  reader.read("decoder_attention_type", o.decoder_attention_type());
  reader.read("decoder_interpolation", o.decoder_interpolation());
  reader.finish();
}

}  // namespace

const std::vector<std::string>& architecture_names() {
  static const std::vector<std::string> names = {"Unet", "UnetPlusPlus", "FPN", "PSPNet", "Linknet", "PAN", "DeepLabV3Plus"};
  return names;
}

std::shared_ptr<SegmentationModelImpl> make_model(const std::string& arch, const Arguments& arguments) {
  ArgumentReader reader(arch, arguments);
  std::shared_ptr<SegmentationModelImpl> model;
  if (arch == "Unet") {
    UnetOptions o;
    read_unet_arguments(reader, o);
    model = Unet(o).ptr();
  } else if (arch == "DeepLabV3Plus") {
    DeepLabV3PlusOptions o;
    reader.read_common(o);
    reader.read("encoder_output_stride", o.encoder_output_stride());
    reader.read("decoder_channels", o.decoder_channels());
    reader.read("decoder_atrous_rates", o.decoder_atrous_rates());
    reader.read("decoder_aspp_separable", o.decoder_aspp_separable());
    reader.read("decoder_aspp_dropout", o.decoder_aspp_dropout());
    reader.read("upsampling", o.upsampling());
    reader.finish();
    model = DeepLabV3Plus(o).ptr();
  } else if (arch == "UnetPlusPlus") {
    UnetPlusPlusOptions o;
    read_unet_arguments(reader, o);
    model = UnetPlusPlus(o).ptr();
  } else if (arch == "FPN") {
    FPNOptions o;
    reader.read_common(o);
    reader.read("decoder_pyramid_channels", o.decoder_pyramid_channels());
    reader.read("decoder_segmentation_channels", o.decoder_segmentation_channels());
    reader.read("decoder_merge_policy", o.decoder_merge_policy());
    reader.read("decoder_dropout", o.decoder_dropout());
    reader.read("decoder_interpolation", o.decoder_interpolation());
    reader.read("upsampling", o.upsampling());
    reader.finish();
    model = FPN(o).ptr();
  } else if (arch == "PSPNet") {
    PSPNetOptions o;
    reader.read_common(o);
    reader.read("psp_out_channels", o.psp_out_channels());
    reader.read("decoder_use_norm", o.decoder_use_norm());
    reader.read("psp_dropout", o.psp_dropout());
    reader.read("upsampling", o.upsampling());
    reader.finish();
    model = PSPNet(o).ptr();
  } else if (arch == "Linknet") {
    LinknetOptions o;
    reader.read_common(o);
    reader.read("decoder_use_norm", o.decoder_use_norm());
    reader.finish();
    model = Linknet(o).ptr();
  } else if (arch == "PAN") {
    PANOptions o;
    reader.read_common(o);
    reader.read("encoder_output_stride", o.encoder_output_stride());
    reader.read("decoder_channels", o.decoder_channels());
    reader.read("decoder_interpolation", o.decoder_interpolation());
    reader.read("upsampling", o.upsampling());
    reader.finish();
    model = PAN(o).ptr();
  } else {
    std::string known;
    for (const auto& name : architecture_names()) known += " " + name;
    TORCH_CHECK_VALUE(false, "unknown segmentation architecture '", arch, "'; torchtl builds:", known);
  }
  return model;
}

}  // namespace torchtl::segmentation_models
