#include "segmentation_models/unetplusplus.h"

#include <c10/util/Exception.h>

#include <map>

#include "segmentation_models/unet.h"

namespace torchtl::segmentation_models {

namespace nn = torch::nn;
namespace F = torch::nn::functional;

namespace {

std::string key(int64_t depth_idx, int64_t layer_idx) { return c10::str("x_", depth_idx, "_", layer_idx); }

}  // namespace

torch::Tensor UnetPlusPlusDecoderBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& skip) {
  return fuse(F::interpolate(x, interpolation(interpolation_mode).scale_factor(std::vector<double>{2.0, 2.0})), skip);
}

UnetPlusPlusDecoderImpl::UnetPlusPlusDecoderImpl(const std::vector<int64_t>& encoder_channels,
                                                 const std::vector<int64_t>& decoder_channels, int64_t n_blocks,
                                                 DecoderNorm norm, const std::optional<std::string>& attention_type,
                                                 const std::string& interpolation_mode) {
  TORCH_CHECK_VALUE(n_blocks == static_cast<int64_t>(decoder_channels.size()), "Model depth is ", n_blocks,
                    ", but you provide `decoder_channels` for ", decoder_channels.size(), " blocks.");
  std::vector<int64_t> encoder(encoder_channels.rbegin(), encoder_channels.rend() - 1);
  std::vector<int64_t> in{encoder.front()};
  in.insert(in.end(), decoder_channels.begin(), decoder_channels.end() - 1);
  std::vector<int64_t> skip(encoder.begin() + 1, encoder.end());
  skip.push_back(0);
  const auto& out = decoder_channels;
  center = register_module("center", nn::Identity());
  blocks = register_module("blocks", nn::ModuleDict());
  std::vector<std::pair<std::string, std::shared_ptr<nn::Module>>> items;
  layers_ = in.size();
  for (size_t layer_idx = 0; layer_idx + 1 < in.size(); ++layer_idx) {
    for (size_t depth_idx = 0; depth_idx <= layer_idx; ++depth_idx) {
      int64_t in_ch, skip_ch, out_ch;
      if (depth_idx == 0) {
        in_ch = in[layer_idx];
        skip_ch = skip[layer_idx] * static_cast<int64_t>(layer_idx + 1);
        out_ch = out[layer_idx];
      } else {
        out_ch = skip[layer_idx];
        skip_ch = skip[layer_idx] * static_cast<int64_t>(layer_idx + 1 - depth_idx);
        in_ch = skip[layer_idx - 1];
      }
      items.emplace_back(key(depth_idx, layer_idx), UnetPlusPlusDecoderBlock(in_ch, skip_ch, out_ch, norm, attention_type,
                                                                             interpolation_mode).ptr());
    }
  }
  items.emplace_back(key(0, in.size() - 1),
                     UnetPlusPlusDecoderBlock(in.back(), 0, out.back(), norm, attention_type, interpolation_mode).ptr());
  blocks->update(items);
  depth_ = static_cast<int64_t>(in.size()) - 1;
}

UnetPlusPlusDecoderBlockImpl& UnetPlusPlusDecoderImpl::block(int64_t depth_idx, int64_t layer_idx) {
  return *blocks[key(depth_idx, layer_idx)]->as<UnetPlusPlusDecoderBlockImpl>();
}

torch::Tensor UnetPlusPlusDecoderImpl::decode(const std::vector<torch::Tensor>& all) {
  std::vector<torch::Tensor> features(all.rbegin(), all.rend() - 1);
  std::map<std::string, torch::Tensor> dense;
  for (int64_t layer_idx = 0; layer_idx + 1 < static_cast<int64_t>(layers_); ++layer_idx) {
    for (int64_t depth_idx = 0; depth_idx < depth_ - layer_idx; ++depth_idx) {
      if (layer_idx == 0) {
        dense[key(depth_idx, depth_idx)] = block(depth_idx, depth_idx).forward(features[depth_idx], features[depth_idx + 1]);
      } else {
        const int64_t dense_l_i = depth_idx + layer_idx;
        std::vector<torch::Tensor> cat;
        for (int64_t idx = depth_idx + 1; idx <= dense_l_i; ++idx) cat.push_back(dense[key(idx, dense_l_i)]);
        cat.push_back(features[dense_l_i + 1]);
        dense[key(depth_idx, dense_l_i)] =
            block(depth_idx, dense_l_i).forward(dense[key(depth_idx, dense_l_i - 1)], torch::cat(cat, 1));
      }
    }
  }
  return block(0, depth_).forward(dense[key(0, depth_ - 1)], torch::Tensor());
}

UnetPlusPlusImpl::UnetPlusPlusImpl(const UnetPlusPlusOptions& o) {
  ResNetEncoder encoder(ResNetEncoderOptions(o.encoder_name())
                            .in_channels(o.in_channels())
                            .depth(o.encoder_depth())
                            .pretrained(o.encoder_pretrained()));
  UnetPlusPlusDecoder decoder(encoder->out_channels(), o.decoder_channels(), o.encoder_depth(),
                              decoder_norm(o.decoder_use_norm()), o.decoder_attention_type(), o.decoder_interpolation());
  SegmentationHead head(o.decoder_channels().back(), o.classes(), 3, o.activation());
  build(o, encoder, decoder.ptr(), head);
}

}  // namespace torchtl::segmentation_models
