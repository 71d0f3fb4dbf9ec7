// The INT8 decoder against the fp32 one: the same decoder inputs give nearly the same images, a single sample gives what
// a batch does, and the calibrated ranges hold what the fp32 decoder produces.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "vae/evaluation.hpp"
#include "vae/kernels.hpp"
#include "vae/model.hpp"
#include "vae/quantized.hpp"

namespace vae {
namespace {

struct Decoders {
  explicit Decoders(const Arch& a, std::uint64_t seed = 3)
      : arch(a), layout(arch), params(layout.padded_size()), k32(make_parallel_kernels(2)), k8(make_parallel_kernels(2)) {
    init_parameters<float>(layout, seed, params);
    fp32 = std::make_unique<Fp32Decoder>(arch, layout, params.data(), *k32, 100);
    int8 = std::make_unique<Int8Decoder>(arch, layout, params.data(), *k8, 100);
  }
  Arch arch;
  ParamLayout layout;
  std::vector<float> params;
  std::unique_ptr<Kernels<float>> k32, k8;
  std::unique_ptr<Fp32Decoder> fp32;
  std::unique_ptr<Int8Decoder> int8;
};

Arch v3() {
  Arch a;
  a.hidden = {640, 320};
  a.latent = 128;
  return a;
}

TEST(Int8Decoder, ImagesMatchTheFp32Decoder) {
  for (bool every_layer : {false, true}) {
    Arch arch = v3();
    arch.label_every_layer = every_layer;
    Decoders d(arch);
    const std::size_t n = 300;
    const std::vector<float> inputs = digit_decoder_inputs(arch, *d.k32, all_classes(arch), n / 10, 1.0, 17);
    std::vector<std::uint8_t> a(n * kImagePixels), b(n * kImagePixels);
    decode_to_pixels(*d.fp32, inputs, n, a.data());
    decode_to_pixels(*d.int8, inputs, n, b.data());
    const double s = mean_ssim(a.data(), b.data(), n);
    EXPECT_GT(s, 0.99) << (every_layer ? "label into every layer" : "label into the first layer");
    EXPECT_LT(s, 1.0) << "the INT8 images cannot be the fp32 ones exactly";
  }
}

TEST(Int8Decoder, OneSampleDecodesAsInABatch) {
  Decoders d(v3());
  const std::size_t n = 37, pixels = std::size_t(kImagePixels), dec_in = d.arch.dec_in();
  const std::vector<float> inputs = digit_decoder_inputs(d.arch, *d.k32, all_classes(d.arch), 4, 1.0, 5);
  std::vector<float> batch(n * pixels), one(pixels);
  d.int8->decode(inputs.data(), n, batch.data());
  for (std::size_t i = 0; i < n; i += 6) {
    d.int8->decode(inputs.data() + i * dec_in, 1, one.data());
    for (std::size_t p = 0; p < pixels; ++p) ASSERT_EQ(one[p], batch[i * pixels + p]) << "sample " << i << " pixel " << p;
  }
}

// The decoder input's range holds z at temperature 1 and the one-hot: about ±4.5 over 2,048 draws, quantized in steps
// of under 0.04 with 0 exact.
TEST(Int8Decoder, CalibratedRangesHoldTheInputs) {
  Decoders d(v3());
  const Int8Decoder::Range& in = d.int8->input_range(0);
  EXPECT_GT(in.scale * in.zero, 3.0f);
  EXPECT_GT(in.scale * (255.0f - in.zero), 3.0f);
  EXPECT_LT(in.scale, 0.04f);
  EXPECT_EQ(in.zero, std::nearbyint(in.zero));
  // ELU outputs are above −1: the hidden layers' ranges start there or above
  for (std::size_t l = 1; l < 3; ++l) EXPECT_GE(-d.int8->input_range(l).scale * d.int8->input_range(l).zero, -1.0f - 1e-6f);
}

}  // namespace
}  // namespace vae
