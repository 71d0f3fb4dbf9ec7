// Fuzz target: the digit classifier's file loader, then one prediction with what it read.
#include <cstdint>
#include <vector>

#include "fuzz_common.hpp"
#include "vae/checkpoint.hpp"
#include "vae/classifier.hpp"
#include "vae/errors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const vae::fuzz::Scratch scratch;
  const auto file = scratch.write("fuzzed.h5", data, size);
  try {
    const vae::ClassifierWeights w = vae::read_classifier(file);
    vae::Classifier reader(w, 1, 1);
    const std::vector<std::uint8_t> image(784, 128);
    const std::vector<int> digit = reader.predict(image.data(), 1);
    if (digit.size() != 1 || digit[0] < 0 || digit[0] > 9) __builtin_trap();
  } catch (const vae::UsageError&) {
  }
  return 0;
}
