// The decoder in INT8 for inference (vae_sample and vae_eval --precision int8): weights per output column, activations per tensor.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "vae/aligned.hpp"
#include "vae/kernels.hpp"
#include "vae/model.hpp"

namespace vae {

// Decoder inputs drawn at load to calibrate the activations' ranges: z ~ N(0, I) at temperature 1 with the labels in turn.
inline constexpr std::size_t kCalibrationDraws = 2048;

// The decoder's layers with s8 weights (symmetric, one scale per output column: the largest |w| of the column is 127)
// and u8 inputs (one scale and zero point per layer input, from the range the fp32 decoder's inputs to that layer take
// over kCalibrationDraws draws, widened to hold 0). The scales are computed when the model is loaded, not stored: a
// checkpoint stays the fp32 training state, and calibrating costs one fp32 pass over the draws (milliseconds). The
// products are exact in int32; the bias, the activation and the logits are fp32.
class Int8Decoder final : public Decoder {
 public:
  // k runs the INT8 products (and needs no scratch bound); the calibration's fp32 pass has kernels of its own.
  Int8Decoder(const Arch& arch, const ParamLayout& layout, const float* params, Kernels<float>& k, std::size_t max_batch);

  // logits [n × image] of decoder inputs [n × dec_in], max_batch rows at a time; n = 1 stays on the calling thread.
  void decode(const float* inputs, std::size_t n, float* logits) override;
  std::size_t max_batch() const { return max_batch_; }

  struct Range {
    float scale = 1, zero = 0;  // x ≈ scale·(q − zero)
  };
  // Layer l's input quantization (l = 0 is the decoder input).
  const Range& input_range(std::size_t l) const { return layers_[l].in; }

 private:
  struct Layer {
    std::size_t k = 0, m = 0;
    Activation act = Activation::identity;
    std::vector<std::int8_t> w;              // [k × m]
    std::vector<float> scale;                // [m]: in.scale·wscale[j]
    std::vector<std::int32_t> zero_term;     // [m]: in.zero·Σ_i w[i][j]
    std::vector<float> bias;                 // [m]
    AlignedBuffer<std::uint32_t> packed;     // the kernels' form of w
    Range in;
    bool widened = false;                    // input = [previous output | one-hot label]
  };
  Int8Weights weights(const Layer& layer) const;
  void calibrate(const float* params, const ParamLayout& layout, const std::vector<const LayerSpec*>& specs);

  Arch arch_;
  Kernels<float>& k_;
  std::size_t max_batch_;
  std::vector<Layer> layers_;
  AlignedBuffer<std::uint8_t> act_[2];  // u8 inputs of alternate layers, [max_batch × int8_row_bytes(max input)]
  std::size_t act_ld_ = 0;
};

}  // namespace vae
