// Making untrusted text safe to print in a one-line message.
#include "vae/errors.hpp"

#include <cstdint>

namespace vae {
namespace {

// The length of the valid UTF-8 sequence starting at text[i] (at least two bytes), or 0.
std::size_t utf8_sequence(std::string_view text, std::size_t i) {
  const auto b = [&](std::size_t k) { return std::uint8_t(text[k]); };
  const std::uint8_t lead = b(i);
  std::size_t n = 0;
  std::uint32_t cp = 0;
  if (lead >= 0xc2 && lead <= 0xdf) n = 2, cp = lead & 0x1fu;
  else if (lead >= 0xe0 && lead <= 0xef) n = 3, cp = lead & 0x0fu;
  else if (lead >= 0xf0 && lead <= 0xf4) n = 4, cp = lead & 0x07u;
  else return 0;
  if (i + n > text.size()) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (b(i + k) & 0x3fu);
  }
  // Overlong forms, UTF-16 surrogates and code points past U+10FFFF are not text.
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

}  // namespace

std::string printable(std::string_view text, std::size_t max) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  std::size_t i = 0;
  while (i < text.size()) {
    const std::uint8_t c = std::uint8_t(text[i]);
    std::size_t take = 1;
    std::string piece;
    if (c >= 0x20 && c < 0x7f) {
      piece = char(c);
    } else if (const std::size_t n = c >= 0x80 ? utf8_sequence(text, i) : 0; n > 0) {
      piece = std::string(text.substr(i, n));
      take = n;
    } else {
      piece = {'\\', 'x', kHex[c >> 4], kHex[c & 15]};
    }
    if (out.size() + piece.size() > max) break;
    out += piece;
    i += take;
  }
  if (i < text.size()) out += "... (" + std::to_string(text.size()) + " bytes)";
  return out;
}

}  // namespace vae
