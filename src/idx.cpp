// IDX reading and validation; all parsing of untrusted bytes happens here.
#include "vae/idx.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <utility>

#include "vae/errors.hpp"

namespace vae {
namespace {

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& problem) {
  throw UsageError(printable(path.string(), 200) + ": " + problem);
}

std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) | (std::uint32_t(p[2]) << 8) | std::uint32_t(p[3]);
}

void put_be32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<std::uint8_t>(v >> s));
}

bool ends_with_gz(const std::filesystem::path& p) { return p.extension() == ".gz"; }

// Fails unless path is a regular file (or a link to one), saying what it is instead.
void require_file(const std::filesystem::path& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (std::filesystem::is_regular_file(status)) return;
  if (std::filesystem::is_directory(status)) fail(path, "is a directory, not an IDX file");
  if (std::filesystem::exists(status)) fail(path, "is not a regular file");
  fail(path, "no such file");
}

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

// Checks the header and returns the item count; dims receives the dimensions after the count. Images must be 28×28,
// checked before the length, so a file of other images says so (and the payload size cannot overflow).
std::uint32_t check_header(const std::filesystem::path& path, std::span<const std::uint8_t> bytes, std::uint32_t magic,
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
  if (rank == 3 && (dims[1] != kImageSide || dims[2] != kImageSide))
    fail(path, "images are " + std::to_string(dims[1]) + "x" + std::to_string(dims[2]) + ", expected 28x28");
  std::size_t payload = 1;
  for (auto d : dims) payload *= d;
  const std::size_t have = bytes.size() - header;
  if (have < payload)
    fail(path, "truncated: header promises " + std::to_string(payload) + " data bytes, file has " + std::to_string(have));
  if (have > payload)
    fail(path, "length mismatch: header promises " + std::to_string(payload) + " data bytes, file has " + std::to_string(have));
  return dims[0];
}

// Writes bytes to path atomically: a temporary file in the same directory, flushed to disk, renamed over path, and the
// directory flushed, so a reader sees the whole file or none. Returns false (and leaves nothing) if the directory is not
// writable; other failures throw.
bool write_atomically(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) {
  std::string tmp = path.string() + ".tmp.XXXXXX";
  const int fd = mkstemp(tmp.data());
  if (fd < 0) {
    if (errno == EACCES || errno == EROFS || errno == EPERM) return false;
    fail(path, std::string("cannot create a temporary file: ") + std::strerror(errno));
  }
  ::fchmod(fd, 0644);  // readable by everyone who can read the data beside it, as a cache should be
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = std::strerror(errno);
      ::close(fd);
      ::unlink(tmp.c_str());
      fail(path, "cannot write the decompressed cache: " + why);
    }
    done += std::size_t(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    fail(path, std::string("cannot flush the decompressed cache: ") + std::strerror(errno));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    ::unlink(tmp.c_str());
    fail(path, "cannot rename the decompressed cache into place: " + why);
  }
  const int dir = ::open(path.parent_path().empty() ? "." : path.parent_path().c_str(), O_RDONLY | O_DIRECTORY);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
  return true;
}

}  // namespace

MappedFile::MappedFile(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    fail(path, "cannot stat: " + why);
  }
  size_ = std::size_t(st.st_size);
  if (size_ > 0) {
    data_ = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    if (data_ == MAP_FAILED) {
      data_ = nullptr;
      const std::string why = std::strerror(errno);
      ::close(fd);
      fail(path, "cannot map: " + why);
    }
  }
  ::close(fd);
}

MappedFile::MappedFile(MappedFile&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  std::swap(data_, o.data_);
  std::swap(size_, o.size_);
  return *this;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(data_, size_);
}

IdxPair IdxPair::from_memory(const std::vector<std::uint8_t>& pixels, const std::vector<std::uint8_t>& labels) {
  IdxPair p;
  p.count = labels.size();
  p.owned = pixels;
  p.owned.insert(p.owned.end(), labels.begin(), labels.end());
  p.pixels = std::span<const std::uint8_t>(p.owned).first(pixels.size());
  p.labels = std::span<const std::uint8_t>(p.owned).subspan(pixels.size());
  return p;
}

std::filesystem::path decompressed_cache(const std::filesystem::path& path) {
  if (!ends_with_gz(path)) return path;
  require_file(path);
  std::error_code ec;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail(path, std::string("cannot stat: ") + std::strerror(errno));
  const std::string name = "." + path.stem().string() + "." + std::to_string(st.st_size) + "-" + std::to_string(st.st_mtim.tv_sec) + "-" +
                           std::to_string(st.st_mtim.tv_nsec) + ".raw";
  const std::filesystem::path beside = path.parent_path() / name;
  if (std::filesystem::exists(beside, ec)) return beside;
  const std::filesystem::path tmpdir = std::filesystem::temp_directory_path(ec);
  const std::filesystem::path elsewhere =
      tmpdir / ("vae_dist-" + std::to_string(std::hash<std::string>{}(std::filesystem::absolute(path, ec).string())) + name);
  if (std::filesystem::exists(elsewhere, ec)) return elsewhere;
  const std::vector<std::uint8_t> bytes = read_gzip(path);
  if (write_atomically(beside, bytes)) return beside;
  if (write_atomically(elsewhere, bytes)) return elsewhere;
  fail(path, "cannot write a decompressed cache next to it or in " + tmpdir.string());
}

std::vector<std::uint8_t> read_maybe_gzip(const std::filesystem::path& path) {
  require_file(path);
  return ends_with_gz(path) ? read_gzip(path) : read_raw(path);
}

IdxPair load_idx_pair(const std::filesystem::path& images, const std::filesystem::path& labels) {
  IdxPair pair;
  pair.images_path = images.string();
  pair.labels_path = labels.string();
  std::vector<std::uint32_t> dims;

  for (const auto& p : {images, labels}) require_file(p);
  pair.image_file = MappedFile(decompressed_cache(images));
  const std::span<const std::uint8_t> img = pair.image_file.bytes();
  const std::uint32_t n = check_header(images, img, 0x00000803u, dims);
  if (n == 0) fail(images, "holds no images");

  pair.label_file = MappedFile(decompressed_cache(labels));
  const std::span<const std::uint8_t> lab = pair.label_file.bytes();
  const std::uint32_t m = check_header(labels, lab, 0x00000801u, dims);
  if (m != n) fail(labels, "holds " + std::to_string(m) + " labels but " + images.string() + " holds " + std::to_string(n) + " images");

  pair.count = n;
  pair.pixels = img.subspan(16);
  pair.labels = lab.subspan(8);
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
