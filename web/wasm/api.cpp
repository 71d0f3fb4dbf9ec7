// The decoder's C interface for the page (web/app.js): the native model code, compiled to WebAssembly, one thread.
#include <emscripten/emscripten.h>

#include <algorithm>
#include <exception>
#include <memory>
#include <string>

#include "vae/kernels.hpp"
#include "vae/model.hpp"
#include "vae/web_decoder.hpp"

namespace {

// One opened decoder file: its parameters, the kernels, and a network of `max_batch` rows whose decoder input the page
// writes directly.
struct Decoder {
  vae::WebDecoder file;
  std::unique_ptr<vae::ParamLayout> layout;
  std::unique_ptr<vae::Kernels<float>> kernels;
  std::unique_ptr<vae::InferenceNetwork> net;
  std::vector<float> pixels;  // [max_batch × 784] probabilities, the page's to read
  std::size_t max_batch = 0;
  std::string isa, error;
};

}  // namespace

extern "C" {

// Opens the bytes of a web decoder file for batches of up to max_batch samples. Always returns a decoder; vae_error()
// says whether it is usable.
EMSCRIPTEN_KEEPALIVE Decoder* vae_open(const std::uint8_t* bytes, std::size_t size, int max_batch) {
  auto d = std::make_unique<Decoder>();
  try {
    d->file = vae::decode_web_decoder({bytes, size}, "decoder file");
    d->layout = std::make_unique<vae::ParamLayout>(d->file.arch);
    d->kernels = vae::make_parallel_kernels(1);
    d->isa = d->kernels->name();
    d->net = std::make_unique<vae::InferenceNetwork>(d->file.arch, *d->layout, *d->kernels, std::size_t(std::max(1, max_batch)));
    d->max_batch = std::size_t(std::max(1, max_batch));
    d->pixels.resize(d->max_batch * vae::kImagePixels);
  } catch (const std::exception& e) {
    d->error = e.what();
  }
  return d.release();
}

EMSCRIPTEN_KEEPALIVE const char* vae_error(const Decoder* d) { return d->error.c_str(); }
EMSCRIPTEN_KEEPALIVE void vae_close(Decoder* d) { delete d; }
EMSCRIPTEN_KEEPALIVE int vae_latent(const Decoder* d) { return d->file.arch.latent; }
EMSCRIPTEN_KEEPALIVE int vae_classes(const Decoder* d) { return d->file.arch.conditional ? d->file.arch.classes : 0; }
EMSCRIPTEN_KEEPALIVE const char* vae_about(const Decoder* d) { return d->file.about.c_str(); }
EMSCRIPTEN_KEEPALIVE const char* vae_isa(const Decoder* d) { return d->isa.c_str(); }

// The decoder input the page fills: [max_batch × (latent + classes)], z then the label weights of each row; null for a
// decoder that did not open.
EMSCRIPTEN_KEEPALIVE float* vae_inputs(Decoder* d) { return d->net ? d->net->net().decoder_input().data() : nullptr; }

// Decodes rows [0, n) of the input into pixel probabilities σ(logit) [n × 784], returned; null unless 1 ≤ n ≤ max_batch.
EMSCRIPTEN_KEEPALIVE const float* vae_decode(Decoder* d, int n) {
  if (!d->net || n < 1 || std::size_t(n) > d->max_batch) return nullptr;
  vae::Network<float>& net = d->net->net();
  net.decode(*d->kernels, d->file.params.data(), std::size_t(n));
  const std::span<const float> logits = net.logits();
  for (std::size_t i = 0; i < std::size_t(n) * vae::kImagePixels; ++i) d->pixels[i] = vae::pixel_probability(logits[i]);
  return d->pixels.data();
}

}  // extern "C"
