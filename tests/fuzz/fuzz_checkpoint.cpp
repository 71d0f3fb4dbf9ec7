// Fuzz target: the checkpoint loader, then what --resume and vae_sample do with what it returns.
#include <cstdint>
#include <vector>

#include "fuzz_common.hpp"
#include "vae/checkpoint.hpp"
#include "vae/errors.hpp"
#include "vae/kernels.hpp"
#include "vae/model.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const vae::fuzz::Scratch scratch;
  const auto file = scratch.write("fuzzed.h5", data, size);
  try {
    const vae::Checkpoint c = vae::read_checkpoint(file);
    // vae_sample: the layout and one decoded digit from the parameters read.
    const vae::ParamLayout layout(c.arch);
    if (c.params.size() != layout.padded_size() || c.adam_m.size() != c.params.size() || c.adam_v.size() != c.params.size())
      __builtin_trap();
    const auto kernels = vae::make_kernels(vae::KernelChoice::reference, 1);
    vae::InferenceNetwork inference(c.arch, layout, *kernels, 1);
    const int digit[] = {0};
    const std::vector<float> inputs = vae::digit_decoder_inputs(c.arch, *kernels, digit, 1, 1.0, 1);
    std::vector<std::uint8_t> pixels(784);
    vae::decode_to_pixels(inference.net(), *kernels, c.params.data(), inputs, 1, pixels.data());
  } catch (const vae::UsageError&) {
  }
  return 0;
}
