// The web decoder file: round trips for every kind of decoder, decoding equal to the checkpoint's, and corrupt files refused.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "vae/errors.hpp"
#include "vae/kernels.hpp"
#include "vae/model.hpp"
#include "vae/web_decoder.hpp"

namespace vae {
namespace {

struct Model {
  explicit Model(const Arch& a) : arch(a), layout(a), params(layout.padded_size()) { init_parameters<float>(layout, 7, params); }
  Arch arch;
  ParamLayout layout;
  std::vector<float> params;
};

Arch arch_of(bool conditional, bool label_every_layer) {
  Arch a;
  a.hidden = {24, 12};
  a.latent = 5;
  a.act = Activation::elu;
  a.conditional = conditional;
  a.label_every_layer = label_every_layer;
  return a;
}

// The decoder's logits for a few rows of fixed inputs.
std::vector<float> decode(const Arch& arch, const ParamLayout& layout, const float* params) {
  const auto k = make_parallel_kernels(1);
  InferenceNetwork inf(arch, layout, *k, 3);
  const std::span<float> in = inf.net().decoder_input();
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = float(int(i % 7) - 3) * 0.4f;
  inf.net().decode(*k, params, 3);
  const std::span<const float> logits = inf.net().logits();
  return {logits.begin(), logits.begin() + 3 * kImagePixels};
}

void expect_refused(std::vector<std::uint8_t> bytes, const std::string& needle) {
  try {
    decode_web_decoder(bytes, "m.vaed");
    ADD_FAILURE() << "accepted a file that should say: " << needle;
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).rfind("m.vaed: not a usable web decoder file: ", 0), 0u) << e.what();
  }
}

class WebDecoderKinds : public ::testing::TestWithParam<std::pair<bool, bool>> {};

TEST_P(WebDecoderKinds, RoundTripDecodesLikeTheCheckpoint) {
  const Model m(arch_of(GetParam().first, GetParam().second));
  const auto bytes = encode_web_decoder(m.arch, m.layout, m.params, R"({"note":"x"})");
  const WebDecoder d = decode_web_decoder(bytes, "m.vaed");
  EXPECT_EQ(d.arch.describe(), m.arch.describe());
  EXPECT_EQ(d.about, R"({"note":"x"})");
  ASSERT_EQ(d.params.size(), m.params.size());
  const auto& layers = m.layout.layers();
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const bool decoder = l >= m.layout.encoder_layers();
    for (std::size_t i = 0; i < layers[l].in * layers[l].out; ++i)
      ASSERT_EQ(d.params[layers[l].w_offset + i], decoder ? m.params[layers[l].w_offset + i] : 0.0f) << layers[l].name << " weight " << i;
  }
  EXPECT_EQ(decode(d.arch, m.layout, d.params.data()), decode(m.arch, m.layout, m.params.data()));
  // The file holds the decoder only: the header, the note padded to 4 bytes, then exactly its floats.
  std::size_t floats = 0;
  for (std::size_t l = m.layout.encoder_layers(); l < layers.size(); ++l) floats += layers[l].in * layers[l].out + layers[l].out;
  EXPECT_EQ(bytes.size(), 8 + 4 * (8 + 2 + 1) + 12 + 4 * floats);
}

INSTANTIATE_TEST_SUITE_P(Decoders, WebDecoderKinds,
                         ::testing::Values(std::make_pair(false, false), std::make_pair(true, false), std::make_pair(true, true)));

TEST(WebDecoderFile, CorruptFilesAreRefusedWithTheReason) {
  const Model m(arch_of(true, false));
  const auto good = encode_web_decoder(m.arch, m.layout, m.params, "{}");
  auto with_u32 = [&](std::size_t word, std::uint32_t v) {
    auto b = good;
    std::memcpy(b.data() + 8 + 4 * word, &v, 4);
    return b;
  };
  expect_refused({}, "it ends inside the magic number");
  auto bad_magic = good;
  bad_magic[3] = 'X';
  expect_refused(bad_magic, "does not start with VAEDEC01");
  expect_refused(with_u32(0, 2), "format version 2");
  expect_refused(with_u32(1, 0), "the latent size is 0");
  expect_refused(with_u32(1, 100000), "the latent size is 100000, more than 4096");
  expect_refused(with_u32(2, 11), "the class count is 11");
  expect_refused(with_u32(5, 9), "the activation is 9");
  expect_refused(with_u32(6, 100), "images of 100 pixels");
  expect_refused(with_u32(7, 17), "the hidden layer count is 17");
  expect_refused(with_u32(8, 0), "hidden layer 0 has no units");
  expect_refused(with_u32(8, 60000), "bytes of weights after the header");
  auto longer = good;
  longer.push_back(0);
  expect_refused(longer, "bytes of weights after the header, the file has");
  // Every truncation is refused, never read past the end.
  for (std::size_t n = 0; n < good.size(); n += (n < 80 ? 1 : 997)) expect_refused({good.begin(), good.begin() + std::ptrdiff_t(n)}, "");
  auto nan = good;
  const float bad = std::numeric_limits<float>::quiet_NaN();
  ASSERT_GE(nan.size(), sizeof bad);
  std::memcpy(nan.data() + nan.size() - sizeof bad, &bad, sizeof bad);
  expect_refused(nan, "a weight is nan");
}

}  // namespace
}  // namespace vae
