// Fuzz target: the web decoder file reader (vae_export's format, read by the browser page), then one digit decoded.
#include <cstdint>
#include <span>

#include "vae/errors.hpp"
#include "vae/kernels.hpp"
#include "vae/model.hpp"
#include "vae/web_decoder.hpp"

// As the page does: parse the bytes, then decode one row of the decoder input (finite but huge weights may overflow to
// NaN pixels, which is the file's doing: what is checked is that nothing reads or writes out of bounds).
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  vae::WebDecoder d;
  try {
    d = vae::decode_web_decoder({data, size}, "fuzz.vaed");
  } catch (const vae::UsageError&) {
    return 0;
  }
  const vae::ParamLayout layout(d.arch);
  const auto kernels = vae::make_kernels(vae::KernelChoice::reference, 1);
  vae::InferenceNetwork inference(d.arch, layout, *kernels, 1);
  const std::span<float> in = inference.net().decoder_input();
  for (std::size_t i = 0; i < in.size(); ++i) in[i] = i < std::size_t(d.arch.latent) ? 0.5f : 1.0f;
  inference.net().decode(*kernels, d.params.data(), 1);
  return 0;
}
