// JSON written by the tools (vae_eval's report, vae_export's notes and reference rows): one object, field by field.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdio>
#include <string>

namespace vae {

// One JSON object, written field by field: numbers with nine significant digits (null when not finite), strings escaped.
class JsonObject {
 public:
  JsonObject& number(const std::string& key, double x) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.9g", x);
    return raw(key, std::isfinite(x) ? buf : "null");
  }
  JsonObject& text(const std::string& key, const std::string& value) {
    std::string quoted = "\"";
    for (char ch : value) {
      if (ch == '"' || ch == '\\') quoted += '\\';
      if (static_cast<unsigned char>(ch) < 0x20) {
        char esc[8];
        std::snprintf(esc, sizeof esc, "\\u%04x", unsigned(ch));
        quoted += esc;
      } else {
        quoted += ch;
      }
    }
    return raw(key, quoted + "\"");
  }
  // An array of numbers with nine significant digits, so that a float reads back as the same float.
  template <class T>
  JsonObject& numbers(const std::string& key, const T* x, std::size_t n) {
    std::string list = "[";
    char buf[32];
    for (std::size_t i = 0; i < n; ++i) {
      std::snprintf(buf, sizeof buf, "%.9g", double(x[i]));
      list += (i ? "," : "") + std::string(buf);
    }
    return raw(key, list + "]");
  }
  JsonObject& raw(const std::string& key, const std::string& json) {
    body_ += (body_.empty() ? "{\"" : ",\"") + key + "\":" + json;
    return *this;
  }
  std::string str() const { return (body_.empty() ? "{" : body_) + "}"; }

 private:
  std::string body_;
};

}  // namespace vae
