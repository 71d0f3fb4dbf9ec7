// Fuzz target: the checkpoint loader, then what --resume and vae_sample do with what it returns.
#include <cstdint>
#include <vector>

#include "fuzz_common.hpp"
#include "vae/checkpoint.hpp"
#include "vae/errors.hpp"
#include "vae/kernels.hpp"
#include "vae/model.hpp"

namespace {

// What vae_sample does with a checkpoint: read it, lay out its parameters, decode one digit.
void load_and_decode(const std::filesystem::path& file) {
  const vae::Checkpoint c = vae::read_checkpoint(file);
  const vae::ParamLayout layout(c.arch);
  if (c.params.size() != layout.padded_size() || c.adam_m.size() != c.params.size() || c.adam_v.size() != c.params.size())
    __builtin_trap();
  const auto kernels = vae::make_kernels(vae::KernelChoice::reference, 1);
  vae::InferenceNetwork inference(c.arch, layout, *kernels, 1);
  const int digit[] = {0};
  const std::vector<float> inputs = vae::digit_decoder_inputs(c.arch, *kernels, digit, 1, 1.0, 1);
  std::vector<std::uint8_t> pixels(784);
  vae::decode_to_pixels(inference.net(), *kernels, c.params.data(), inputs, 1, pixels.data());
}

}  // namespace

// As the tools read a checkpoint from outside (fuzz_hdf5_file).
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return vae::fuzz::fuzz_hdf5_file(data, size, load_and_decode);
}
