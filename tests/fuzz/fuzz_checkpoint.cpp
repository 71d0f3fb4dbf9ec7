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

// First as the tools read files from outside (in a child, which a libhdf5 crash may end: that input is then reported as a
// bad file, so it is done with); then in this process, where the sanitizers and the coverage see our code.
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const vae::fuzz::Scratch scratch;
  const auto file = scratch.write("fuzzed.h5", data, size);
  try {
    vae::check_in_child(file, vae::fuzz::in_child(load_and_decode));
  } catch (const vae::UsageError& e) {
    if (vae::fuzz::crashed_the_library(e)) return vae::fuzz::keep_contained(data, size), 0;
  }
  try {
    load_and_decode(file);
  } catch (const vae::UsageError&) {
  }
  return 0;
}
