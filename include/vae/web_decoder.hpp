// The web decoder file (docs/portability.md): a trained decoder on its own, small enough to fetch, read by the browser page.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "vae/model.hpp"

namespace vae {

inline constexpr char kWebDecoderMagic[8] = {'V', 'A', 'E', 'D', 'E', 'C', '0', '1'};
inline constexpr std::uint32_t kWebDecoderVersion = 1;

struct WebDecoder {
  Arch arch;
  std::vector<float> params;  // [ParamLayout(arch).padded_size()]: the decoder's layers filled, the encoder's zero
  std::string about;          // JSON written by vae_export: the checkpoint it came from, its epoch, the architecture
};

// The file's bytes: the header (architecture), `about`, then the decoder layers' weights and biases (params in layout's
// places) in forward order.
std::vector<std::uint8_t> encode_web_decoder(const Arch& arch, const ParamLayout& layout, std::span<const float> params,
                                             const std::string& about);
// Parses and checks a web decoder file; throws UsageError saying what is wrong (`name` is how the message calls the file).
WebDecoder decode_web_decoder(std::span<const std::uint8_t> bytes, const std::string& name);

}  // namespace vae
