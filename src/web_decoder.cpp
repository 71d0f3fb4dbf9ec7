// Writing and reading the web decoder file: little-endian u32 header fields, a JSON note, then float32 layer data.
#include "vae/web_decoder.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "vae/errors.hpp"

namespace vae {
namespace {

static_assert(std::endian::native == std::endian::little, "the web decoder file is little-endian, as are x86, Arm Linux and WebAssembly");

constexpr std::uint32_t kMaxLatent = 4096, kMaxHidden = 16, kMaxWidth = 1u << 16, kMaxAbout = 1u << 16;
constexpr std::size_t kMaxFloats = std::size_t(1) << 28;

class Writer {
 public:
  void u32(std::uint32_t v) { bytes(&v, sizeof v); }
  void bytes(const void* p, std::size_t n) {
    const auto* b = static_cast<const std::uint8_t*>(p);
    out.insert(out.end(), b, b + n);
  }
  std::vector<std::uint8_t> out;
};

class Reader {
 public:
  Reader(std::span<const std::uint8_t> b, const std::string& name) : b_(b), name_(name) {}
  void take(void* dst, std::size_t n, const char* what) {
    if (b_.size() - at_ < n) fail("it ends inside " + std::string(what) + " (" + std::to_string(b_.size()) + " bytes)");
    std::memcpy(dst, b_.data() + at_, n);
    at_ += n;
  }
  std::uint32_t u32(const char* what, std::uint32_t max) {
    std::uint32_t v = 0;
    take(&v, sizeof v, what);
    if (v > max) fail(std::string(what) + " is " + std::to_string(v) + ", more than " + std::to_string(max));
    return v;
  }
  std::size_t left() const { return b_.size() - at_; }
  [[noreturn]] void fail(const std::string& why) const { throw UsageError(name_ + ": not a usable web decoder file: " + why); }

 private:
  std::span<const std::uint8_t> b_;
  std::size_t at_ = 0;
  const std::string& name_;
};

std::size_t padding(std::size_t n) { return (4 - n % 4) % 4; }

}  // namespace

std::vector<std::uint8_t> encode_web_decoder(const Arch& arch, const ParamLayout& layout, std::span<const float> params,
                                             const std::string& about) {
  if (arch.convolutional()) throw UsageError("the browser decoder has no convolution layers: only an MLP model exports to the page");
  Writer w;
  w.bytes(kWebDecoderMagic, sizeof kWebDecoderMagic);
  w.u32(kWebDecoderVersion);
  w.u32(std::uint32_t(arch.latent));
  w.u32(std::uint32_t(arch.classes));
  w.u32(arch.conditional ? 1 : 0);
  w.u32(arch.label_every_layer ? 1 : 0);
  w.u32(std::uint32_t(arch.act));
  w.u32(std::uint32_t(arch.image));
  w.u32(std::uint32_t(arch.hidden.size()));
  for (int h : arch.hidden) w.u32(std::uint32_t(h));
  w.u32(std::uint32_t(about.size()));
  w.bytes(about.data(), about.size());
  const std::uint8_t zeros[4] = {};
  w.bytes(zeros, padding(about.size()));
  const auto& layers = layout.layers();
  for (std::size_t l = layout.encoder_layers(); l < layers.size(); ++l) {
    w.bytes(params.data() + layers[l].w_offset, layers[l].in * layers[l].out * sizeof(float));
    w.bytes(params.data() + layers[l].b_offset, layers[l].out * sizeof(float));
  }
  return std::move(w.out);
}

WebDecoder decode_web_decoder(std::span<const std::uint8_t> bytes, const std::string& name) {
  Reader r(bytes, name);
  char magic[sizeof kWebDecoderMagic];
  r.take(magic, sizeof magic, "the magic number");
  if (!std::equal(magic, magic + sizeof magic, kWebDecoderMagic)) r.fail("it does not start with VAEDEC01 (write one with vae_export)");
  const std::uint32_t version = r.u32("the format version", ~0u);
  if (version != kWebDecoderVersion)
    r.fail("format version " + std::to_string(version) + ", this reader knows version " + std::to_string(kWebDecoderVersion));
  WebDecoder d;
  Arch& a = d.arch;
  a.latent = int(r.u32("the latent size", kMaxLatent));
  a.classes = int(r.u32("the class count", kNumClasses));
  a.conditional = r.u32("the conditional flag", 1) == 1;
  a.label_every_layer = r.u32("the label-every-layer flag", 1) == 1;
  a.act = Activation(r.u32("the activation", std::uint32_t(Activation::tanh)));
  a.image = int(r.u32("the image size", kMaxWidth));
  if (a.image != kImagePixels) r.fail("images of " + std::to_string(a.image) + " pixels; this decoder draws 28 x 28");
  if (a.latent == 0) r.fail("the latent size is 0");
  if (a.conditional && a.classes == 0) r.fail("a conditional model with no classes");
  const std::uint32_t hidden = r.u32("the hidden layer count", kMaxHidden);
  for (std::uint32_t i = 0; i < hidden; ++i) {
    a.hidden.push_back(int(r.u32("a hidden width", kMaxWidth)));
    if (a.hidden.back() == 0) r.fail("hidden layer " + std::to_string(i) + " has no units");
  }
  const std::uint32_t about = r.u32("the note's length", kMaxAbout);
  d.about.resize(about);
  r.take(d.about.data(), about, "the note");
  std::uint8_t pad[4];
  r.take(pad, padding(about), "the note's padding");

  const ParamLayout layout(a);
  const auto& layers = layout.layers();
  std::size_t floats = 0;
  for (std::size_t l = layout.encoder_layers(); l < layers.size(); ++l) floats += layers[l].in * layers[l].out + layers[l].out;
  if (floats > kMaxFloats) r.fail("a decoder of " + std::to_string(floats) + " parameters, more than 2^28");
  if (r.left() != floats * sizeof(float))
    r.fail("the architecture needs " + std::to_string(floats * sizeof(float)) + " bytes of weights after the header, the file has " +
           std::to_string(r.left()));
  d.params.assign(layout.padded_size(), 0.0f);
  for (std::size_t l = layout.encoder_layers(); l < layers.size(); ++l) {
    r.take(d.params.data() + layers[l].w_offset, layers[l].in * layers[l].out * sizeof(float), "the weights");
    r.take(d.params.data() + layers[l].b_offset, layers[l].out * sizeof(float), "the biases");
  }
  const auto bad = std::find_if(d.params.begin(), d.params.end(), [](float x) { return !std::isfinite(x); });
  if (bad != d.params.end()) r.fail("a weight is " + std::to_string(*bad) + " (the model it came from diverged)");
  return d;
}

}  // namespace vae
