// IDX reading and validation; all parsing of untrusted bytes happens here.
#include "vae/idx.hpp"

#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "vae/errors.hpp"

namespace vae {
namespace {

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& problem) {
  throw UsageError(path.string() + ": " + problem);
}

std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) | (std::uint32_t(p[2]) << 8) | std::uint32_t(p[3]);
}

void put_be32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<std::uint8_t>(v >> s));
}

bool ends_with_gz(const std::filesystem::path& p) { return p.extension() == ".gz"; }

std::vector<std::uint8_t> read_raw(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, std::string("cannot open: ") + std::strerror(errno));
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail(path, "read error");
  return bytes;
}

std::vector<std::uint8_t> read_gzip(const std::filesystem::path& path) {
  std::vector<std::uint8_t> compressed = read_raw(path);
  if (compressed.size() < 2 || compressed[0] != 0x1f || compressed[1] != 0x8b) fail(path, "not a gzip file (bad gzip magic)");
  z_stream zs{};
  if (inflateInit2(&zs, 15 + 16) != Z_OK) fail(path, "zlib initialisation failed");
  std::vector<std::uint8_t> out(compressed.size() * 4 + 1024);
  zs.next_in = compressed.data();
  zs.avail_in = static_cast<uInt>(compressed.size());
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    if (zs.total_out == out.size()) out.resize(out.size() * 2);
    zs.next_out = out.data() + zs.total_out;
    zs.avail_out = static_cast<uInt>(out.size() - zs.total_out);
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc == Z_BUF_ERROR && zs.avail_in == 0) {
      inflateEnd(&zs);
      fail(path, "truncated gzip stream");
    }
    if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) {
      std::string msg = zs.msg ? zs.msg : "error " + std::to_string(rc);
      inflateEnd(&zs);
      fail(path, "corrupt gzip stream: " + msg);
    }
  }
  out.resize(zs.total_out);
  inflateEnd(&zs);
  return out;
}

// Checks the header and returns the item count; dims receives the dimensions after the count.
std::uint32_t check_header(const std::filesystem::path& path, const std::vector<std::uint8_t>& bytes, std::uint32_t magic,
                           std::vector<std::uint32_t>& dims) {
  const std::uint32_t rank = magic & 0xff;
  const char* what = rank == 3 ? "images" : "labels";
  if (bytes.size() < 4) fail(path, "file too short for an IDX header (" + std::to_string(bytes.size()) + " bytes)");
  const std::uint32_t got = be32(bytes.data());
  if ((got & 0xffffff00u) != (magic & 0xffffff00u)) {
    std::ostringstream os;
    os << "bad magic 0x" << std::hex << std::setw(8) << std::setfill('0') << got << ", expected 0x" << std::setw(8) << magic << " (IDX "
       << what << ")";
    fail(path, os.str());
  }
  if ((got & 0xff) != rank)
    fail(path, "IDX rank is " + std::to_string(got & 0xff) + ", expected " + std::to_string(rank) + " for " + what);
  const std::size_t header = 4 + 4 * std::size_t(rank);
  if (bytes.size() < header) fail(path, "file too short for its IDX header (" + std::to_string(bytes.size()) + " bytes)");
  dims.clear();
  for (std::uint32_t d = 0; d < rank; ++d) dims.push_back(be32(bytes.data() + 4 + 4 * d));
  std::size_t payload = 1;
  for (auto d : dims) payload *= d;
  const std::size_t have = bytes.size() - header;
  if (have < payload)
    fail(path, "truncated: header promises " + std::to_string(payload) + " data bytes, file has " + std::to_string(have));
  if (have > payload)
    fail(path, "length mismatch: header promises " + std::to_string(payload) + " data bytes, file has " + std::to_string(have));
  return dims[0];
}

}  // namespace

std::vector<std::uint8_t> read_maybe_gzip(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) fail(path, "no such file");
  return ends_with_gz(path) ? read_gzip(path) : read_raw(path);
}

IdxPair load_idx_pair(const std::filesystem::path& images, const std::filesystem::path& labels) {
  IdxPair pair;
  pair.images_path = images.string();
  pair.labels_path = labels.string();
  std::vector<std::uint32_t> dims;

  std::vector<std::uint8_t> img = read_maybe_gzip(images);
  const std::uint32_t n = check_header(images, img, 0x00000803u, dims);
  if (dims[1] != kImageSide || dims[2] != kImageSide)
    fail(images, "images are " + std::to_string(dims[1]) + "x" + std::to_string(dims[2]) + ", expected 28x28");
  if (n == 0) fail(images, "holds no images");

  std::vector<std::uint8_t> lab = read_maybe_gzip(labels);
  const std::uint32_t m = check_header(labels, lab, 0x00000801u, dims);
  if (m != n) fail(labels, "holds " + std::to_string(m) + " labels but " + images.string() + " holds " + std::to_string(n) + " images");

  pair.count = n;
  pair.pixels.assign(img.begin() + 16, img.end());
  pair.labels.assign(lab.begin() + 8, lab.end());
  for (std::size_t i = 0; i < pair.labels.size(); ++i)
    if (pair.labels[i] >= kNumClasses)
      fail(labels, "label " + std::to_string(pair.labels[i]) + " at index " + std::to_string(i) + " is outside 0-9");
  return pair;
}

std::filesystem::path resolve_idx_path(const std::filesystem::path& dir, const std::string& name) {
  std::error_code ec;
  const auto raw = dir / name;
  if (std::filesystem::exists(raw, ec)) return raw;
  const auto gz = dir / (name + ".gz");
  if (std::filesystem::exists(gz, ec)) return gz;
  throw UsageError(raw.string() + ": no such file (nor " + gz.filename().string() + "); run scripts/setup.sh to fetch MNIST");
}

std::vector<std::uint8_t> make_idx_images(const std::vector<std::uint8_t>& pixels, std::uint32_t count, std::uint32_t rows,
                                          std::uint32_t cols) {
  std::vector<std::uint8_t> out;
  put_be32(out, 0x00000803u);
  put_be32(out, count);
  put_be32(out, rows);
  put_be32(out, cols);
  out.insert(out.end(), pixels.begin(), pixels.end());
  return out;
}

std::vector<std::uint8_t> make_idx_labels(const std::vector<std::uint8_t>& labels) {
  std::vector<std::uint8_t> out;
  put_be32(out, 0x00000801u);
  put_be32(out, static_cast<std::uint32_t>(labels.size()));
  out.insert(out.end(), labels.begin(), labels.end());
  return out;
}

}  // namespace vae
