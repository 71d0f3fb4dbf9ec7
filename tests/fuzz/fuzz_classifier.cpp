// Fuzz target: the digit classifier's file loader, then one prediction with what it read.
#include <cstdint>
#include <vector>

#include "fuzz_common.hpp"
#include "vae/checkpoint.hpp"
#include "vae/classifier.hpp"
#include "vae/errors.hpp"

namespace {

// What vae_eval does with a classifier file: read it and classify one image.
void load_and_classify(const std::filesystem::path& file) {
  const vae::ClassifierWeights w = vae::read_classifier(file);
  vae::Classifier reader(w, 1, 1);
  const std::vector<std::uint8_t> image(784, 128);
  const std::vector<int> digit = reader.predict(image.data(), 1);
  if (digit.size() != 1 || digit[0] < 0 || digit[0] > 9) __builtin_trap();
}

}  // namespace

// As vae_eval reads --classifier (fuzz_hdf5_file).
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  return vae::fuzz::fuzz_hdf5_file(data, size, load_and_classify);
}
