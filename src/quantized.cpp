// The INT8 decoder: per-column weight quantization, activation ranges calibrated on draws of the fp32 decoder, and the pass.
#include "vae/quantized.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "vae/errors.hpp"
#include "vae/rng.hpp"

namespace vae {
namespace {

// The u8 quantization of values in [lo, hi] (widened to hold 0, so that 0 is exact): 255 steps over the range.
Int8Decoder::Range range_of(float lo, float hi) {
  lo = std::min(lo, 0.0f);
  hi = std::max(hi, 0.0f);
  Int8Decoder::Range r;
  r.scale = hi > lo ? (hi - lo) / 255.0f : 1.0f;
  r.zero = std::clamp(std::nearbyint(-lo / r.scale), 0.0f, 255.0f);
  return r;
}

}  // namespace

Int8Decoder::Int8Decoder(const Arch& arch, const ParamLayout& layout, const float* params, Kernels<float>& k, std::size_t max_batch)
    : Decoder(), arch_(arch), k_(k), max_batch_(max_batch) {
  if (arch.convolutional()) throw UsageError("the INT8 decoder has no convolution layers: a conv model decodes with --precision fp32");
  std::vector<const LayerSpec*> specs;
  for (std::size_t l = layout.encoder_layers(); l < layout.layers().size(); ++l) specs.push_back(&layout.layers()[l]);
  std::size_t widest = 0;
  for (std::size_t l = 0; l < specs.size(); ++l) {
    const LayerSpec& s = *specs[l];
    Layer layer;
    layer.k = s.in;
    layer.m = s.out;
    layer.act = s.act;
    layer.widened = l > 0 && s.in > specs[l - 1]->out;
    layer.w.resize(s.in * s.out);
    layer.scale.resize(s.out);
    layer.zero_term.resize(s.out);
    layer.bias.assign(params + s.b_offset, params + s.b_offset + s.out);
    const float* w = params + s.w_offset;
    for (std::size_t j = 0; j < s.out; ++j) {
      float most = 0;
      for (std::size_t i = 0; i < s.in; ++i) most = std::max(most, std::abs(w[i * s.out + j]));
      const float wscale = most > 0 ? most / 127.0f : 1.0f;
      layer.scale[j] = wscale;  // times the input's scale once it is calibrated
      for (std::size_t i = 0; i < s.in; ++i)
        layer.w[i * s.out + j] = std::int8_t(std::clamp(std::nearbyint(w[i * s.out + j] / wscale), -127.0f, 127.0f));
    }
    widest = std::max(widest, int8_row_bytes(s.in));
    layers_.push_back(std::move(layer));
  }
  calibrate(params, layout, specs);
  for (Layer& layer : layers_) {
    for (std::size_t j = 0; j < layer.m; ++j) {
      std::int32_t column = 0;
      for (std::size_t i = 0; i < layer.k; ++i) column += layer.w[i * layer.m + j];
      layer.scale[j] *= layer.in.scale;
      layer.zero_term[j] = std::int32_t(layer.in.zero) * column;
    }
    const std::size_t words = k_.int8_packed_words(layer.k, layer.m);
    if (words > 0) {
      layer.packed = AlignedBuffer<std::uint32_t>(words);
      k_.pack_int8_weights(layer.w.data(), layer.k, layer.m, layer.packed.data());
    }
  }
  act_ld_ = widest;
  for (auto& a : act_) {
    a = AlignedBuffer<std::uint8_t>(max_batch_ * act_ld_);
    std::fill_n(a.data(), max_batch_ * act_ld_, std::uint8_t(0));
  }
}

void Int8Decoder::calibrate(const float* params, const ParamLayout& layout, const std::vector<const LayerSpec*>& specs) {
  const std::size_t L = std::size_t(arch_.latent), dec_in = arch_.dec_in(), classes = std::size_t(arch_.classes);
  // The fp32 pass runs on kernels of its own: an InferenceNetwork binds its kernels' scratch, and k_ may be bound to
  // another network of the caller's (the INT8 products need no scratch).
  const std::unique_ptr<Kernels<float>> k = make_parallel_kernels(1);
  InferenceNetwork fp32(arch_, layout, *k, max_batch_);
  Network<float>& net = fp32.net();
  const std::size_t enc = layout.encoder_layers();
  std::vector<float> lo(specs.size(), std::numeric_limits<float>::max()), hi(specs.size(), std::numeric_limits<float>::lowest());
  auto widen = [](float& l, float& h, std::span<const float> v) {
    for (float x : v) {
      l = std::min(l, x);
      h = std::max(h, x);
    }
  };
  const std::uint64_t key = stream_key(0, Stream::calibration, 0);
  for (std::size_t first = 0; first < kCalibrationDraws; first += max_batch_) {
    const std::size_t rows = std::min(max_batch_, kCalibrationDraws - first);
    float* in = net.decoder_input().data();
    for (std::size_t r = 0; r < rows; ++r) {
      float* row = in + r * dec_in;
      k->gaussian_rows(row, 1, L, key, first + r);
      if (arch_.conditional)
        for (std::size_t c = 0; c < classes; ++c) row[L + c] = c == (first + r) % classes ? 1.0f : 0.0f;
    }
    widen(lo[0], hi[0], {in, rows * dec_in});
    net.decode(*k, params, rows);
    for (std::size_t l = 1; l < specs.size(); ++l) {
      widen(lo[l], hi[l], net.layer_output(enc + l - 1).first(rows * specs[l - 1]->out));
      if (layers_[l].widened) widen(lo[l], hi[l], std::vector<float>{0.0f, 1.0f});
    }
  }
  for (std::size_t l = 0; l < specs.size(); ++l) layers_[l].in = range_of(lo[l], hi[l]);
}

Int8Weights Int8Decoder::weights(const Layer& layer) const {
  return {layer.w.data(), layer.k, layer.m, layer.scale.data(), layer.zero_term.data(), layer.bias.data(), layer.act,
          layer.packed.size() ? layer.packed.data() : nullptr};
}

void Int8Decoder::decode(const float* inputs, std::size_t n, float* logits) {
  const std::size_t dec_in = arch_.dec_in(), L = std::size_t(arch_.latent), classes = std::size_t(arch_.classes);
  const std::size_t pixels = layers_.back().m;
  for (std::size_t first = 0; first < n; first += max_batch_) {
    const std::size_t rows = std::min(max_batch_, n - first);
    const float* x = inputs + first * dec_in;
    // u8 decoder input [rows × dec_in], then each layer's u8 output into the other buffer, the last one's fp32 logits
    k_.quantize_int8(x, dec_in, rows, dec_in, 1.0f / layers_[0].in.scale, layers_[0].in.zero, act_[0].data(), act_ld_);
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      const Layer& layer = layers_[l];
      Int8Output out;
      if (l + 1 == layers_.size()) {
        out.y = logits + first * pixels;
        out.ldy = pixels;
      } else {
        out.q = act_[(l + 1) % 2].data();
        out.ldq = act_ld_;
        out.inv_scale = 1.0f / layers_[l + 1].in.scale;
        out.zero_point = layers_[l + 1].in.zero;
      }
      k_.int8_dense_forward(weights(layer), act_[l % 2].data(), act_ld_, rows, out);
      if (l + 1 < layers_.size() && layers_[l + 1].widened) {
        // the one-hot label columns after this layer's output, quantized as the next layer's input
        const Range& next = layers_[l + 1].in;
        for (std::size_t r = 0; r < rows; ++r)
          for (std::size_t c = 0; c < classes; ++c) {
            const float q = std::nearbyint(x[r * dec_in + L + c] * (1.0f / next.scale) + next.zero);
            out.q[r * act_ld_ + layer.m + c] = std::uint8_t(std::clamp(q, 0.0f, 255.0f));
          }
      }
    }
  }
}

}  // namespace vae
