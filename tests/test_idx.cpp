// IDX reader: valid raw and gzip files, and one test per corruption kind, each naming the file and the problem.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <utility>

#include "test_util.hpp"
#include "vae/dataset.hpp"
#include "vae/errors.hpp"
#include "vae/idx.hpp"

namespace vae {
namespace {

using test::TempDir;
using test::write_bytes;

struct IdxFiles : ::testing::Test {
  TempDir dir;
  std::vector<std::uint8_t> pixels, labels;
  void SetUp() override { test::synthetic_images(7, 3, pixels, labels); }
  std::filesystem::path images() const { return dir / "img"; }
  std::filesystem::path labs() const { return dir / "lab"; }
  void write(const std::vector<std::uint8_t>& img, const std::vector<std::uint8_t>& lab) {
    write_bytes(images(), img);
    write_bytes(labs(), lab);
  }
  // The error message of loading, or "" if it loaded.
  std::string error() {
    try {
      load_idx_pair(images(), labs());
    } catch (const UsageError& e) {
      return e.what();
    }
    return "";
  }
};

TEST_F(IdxFiles, ReadsRawFile) {
  write(make_idx_images(pixels, 7), make_idx_labels(labels));
  IdxPair p = load_idx_pair(images(), labs());
  EXPECT_EQ(p.count, 7u);
  EXPECT_EQ(std::vector<std::uint8_t>(p.pixels.begin(), p.pixels.end()), pixels);
  EXPECT_EQ(std::vector<std::uint8_t>(p.labels.begin(), p.labels.end()), labels);
}

TEST_F(IdxFiles, ReadsGzipFile) {
  test::write_gzip(dir / "img.gz", make_idx_images(pixels, 7));
  test::write_gzip(dir / "lab.gz", make_idx_labels(labels));
  IdxPair p = load_idx_pair(dir / "img.gz", dir / "lab.gz");
  EXPECT_EQ(std::vector<std::uint8_t>(p.pixels.begin(), p.pixels.end()), pixels);
  EXPECT_EQ(std::vector<std::uint8_t>(p.labels.begin(), p.labels.end()), labels);
}

// A .gz is decompressed once into a cache file beside it (atomically: no temporary left), which later loads map; a
// changed .gz gets a new cache.
TEST_F(IdxFiles, GzipIsDecompressedOnceIntoACache) {
  test::write_gzip(dir / "img.gz", make_idx_images(pixels, 7));
  const std::filesystem::path cache = decompressed_cache(dir / "img.gz");
  EXPECT_EQ(cache.parent_path(), dir.path());
  EXPECT_EQ(std::filesystem::file_size(cache), 16 + pixels.size());
  EXPECT_EQ(decompressed_cache(dir / "img.gz"), cache);
  for (const auto& e : std::filesystem::directory_iterator(dir.path()))
    EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << e.path();
  std::vector<std::uint8_t> other = pixels;
  other[0] ^= 1;
  test::write_gzip(dir / "img.gz", make_idx_images(other, 7));
  std::filesystem::last_write_time(dir / "img.gz", std::filesystem::last_write_time(cache) + std::chrono::seconds(5));
  EXPECT_NE(decompressed_cache(dir / "img.gz"), cache);
  EXPECT_EQ(decompressed_cache(dir / "img"), dir / "img");  // raw files are used as they are
}

TEST_F(IdxFiles, ResolvesGzipWhenRawIsMissing) {
  test::write_gzip(dir / "train-images-idx3-ubyte.gz", make_idx_images(pixels, 7));
  EXPECT_EQ(resolve_idx_path(dir.path(), "train-images-idx3-ubyte").filename(), "train-images-idx3-ubyte.gz");
  EXPECT_THROW(resolve_idx_path(dir.path(), "t10k-images-idx3-ubyte"), UsageError);
}

TEST_F(IdxFiles, MissingFile) {
  write_bytes(labs(), make_idx_labels(labels));
  EXPECT_EQ(error(), images().string() + ": no such file");
}

TEST_F(IdxFiles, BadMagic) {
  auto img = make_idx_images(pixels, 7);
  img[2] = 0x0d;  // float data type instead of ubyte
  write(img, make_idx_labels(labels));
  EXPECT_EQ(error(), images().string() + ": bad magic 0x00000d03, expected 0x00000803 (IDX images)");
}

TEST_F(IdxFiles, LabelsGivenAsImages) {
  write(make_idx_labels(labels), make_idx_labels(labels));
  EXPECT_EQ(error(), images().string() + ": IDX rank is 1, expected 3 for images");
}

TEST_F(IdxFiles, WrongImageSize) {
  std::vector<std::uint8_t> px(7 * 32 * 32, 1);
  write(make_idx_images(px, 7, 32, 32), make_idx_labels(labels));
  EXPECT_EQ(error(), images().string() + ": images are 32x32, expected 28x28");
}

TEST_F(IdxFiles, TruncatedImages) {
  auto img = make_idx_images(pixels, 7);
  img.resize(img.size() - 100);
  write(img, make_idx_labels(labels));
  EXPECT_EQ(error(), images().string() + ": truncated: header promises 5488 data bytes, file has 5388");
}

TEST_F(IdxFiles, TrailingBytes) {
  auto lab = make_idx_labels(labels);
  lab.push_back(0);
  write(make_idx_images(pixels, 7), lab);
  EXPECT_EQ(error(), labs().string() + ": length mismatch: header promises 7 data bytes, file has 8");
}

TEST_F(IdxFiles, HeaderTooShort) {
  write(std::vector<std::uint8_t>{0, 0}, make_idx_labels(labels));
  EXPECT_EQ(error(), images().string() + ": file too short for an IDX header (2 bytes)");
}

TEST_F(IdxFiles, CountMismatch) {
  auto lab = labels;
  lab.pop_back();
  write(make_idx_images(pixels, 7), make_idx_labels(lab));
  EXPECT_EQ(error(), labs().string() + ": holds 6 labels but " + images().string() + " holds 7 images");
}

TEST_F(IdxFiles, LabelOutOfRange) {
  auto lab = labels;
  lab[4] = 12;
  write(make_idx_images(pixels, 7), make_idx_labels(lab));
  EXPECT_EQ(error(), labs().string() + ": label 12 at index 4 is outside 0-9");
}

TEST_F(IdxFiles, CorruptGzip) {
  std::vector<std::uint8_t> junk = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x11};
  write_bytes(dir / "img.gz", junk);
  write_bytes(labs(), make_idx_labels(labels));
  try {
    load_idx_pair(dir / "img.gz", labs());
    FAIL() << "corrupt gzip accepted";
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()).rfind((dir / "img.gz").string() + ": corrupt gzip stream", 0), 0u) << e.what();
  }
}

TEST_F(IdxFiles, TruncatedGzip) {
  test::write_gzip(dir / "img.gz", make_idx_images(pixels, 7));
  auto bytes = read_maybe_gzip(dir / "img.gz");  // round trip works before truncation
  EXPECT_EQ(bytes.size(), 16 + pixels.size());
  std::ifstream in(dir / "img.gz", std::ios::binary);
  std::vector<std::uint8_t> gz((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  gz.resize(gz.size() / 2);
  write_bytes(dir / "img.gz", gz);
  EXPECT_THROW(read_maybe_gzip(dir / "img.gz"), UsageError);
}

TEST(DatasetTest, SelectsDigitsAndSplitsTail) {
  IdxPair p = IdxPair::from_memory(std::vector<std::uint8_t>(6 * kImagePixels, 0), {0, 1, 2, 1, 0, 1});
  const int binary[] = {0, 1};
  Dataset d = Dataset::select_digits(p, binary);
  ASSERT_EQ(d.size(), 5u);
  EXPECT_EQ(d.label(2), 1);  // row 3 of the file
  Dataset v = d.split_tail(2);
  EXPECT_EQ(d.size(), 3u);
  EXPECT_EQ(v.size(), 2u);
  EXPECT_EQ(v.label(0), 0);
  EXPECT_EQ(v.label(1), 1);
}

TEST(DatasetTest, PermutationDependsOnlyOnSeedAndEpoch) {
  std::vector<std::uint32_t> a(1000), b(1000), c(1000);
  epoch_permutation(7, 3, a);
  epoch_permutation(7, 3, b);
  epoch_permutation(7, 4, c);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  std::sort(c.begin(), c.end());
  for (std::uint32_t i = 0; i < 1000; ++i) ASSERT_EQ(c[i], i);
}

// A move by hand: pixel (x 3, y 5) moved 2 right and 1 up lands at (5, 4); what comes in at the border is black.
TEST(DatasetTest, ShiftMovesPixelsAndBlackensTheBorder) {
  std::vector<std::uint8_t> in(kImagePixels, 0), out(kImagePixels, 7);
  in[5 * 28 + 3] = 200;
  shift_image(in.data(), out.data(), 2, -1);
  for (int i = 0; i < kImagePixels; ++i) ASSERT_EQ(out[std::size_t(i)], i == 4 * 28 + 5 ? 200 : 0) << "pixel " << i;
  std::fill(in.begin(), in.end(), 255);
  shift_image(in.data(), out.data(), -1, 3);
  for (int y = 0; y < 28; ++y)
    for (int x = 0; x < 28; ++x) ASSERT_EQ(out[std::size_t(y * 28 + x)], y < 3 || x == 27 ? 0 : 255) << x << "," << y;
  shift_image(in.data(), out.data(), 0, 0);
  EXPECT_EQ(out, in);
}

// Over 20,000 keys: a fraction p of images moves (less the 1/9 of draws that land on (0, 0)), every move in the square,
// each of the 9 moves about equally often; the same key, the same move.
TEST(DatasetTest, ShiftDrawsFollowTheProbabilityAndTheRange) {
  int counts[3][3] = {};
  const int n = 20000;
  int unmoved = 0;
  for (int i = 0; i < n; ++i) {
    const auto [dx, dy] = draw_shift(0.3, 1, std::uint64_t(i) * 7919);
    ASSERT_EQ(draw_shift(0.3, 1, std::uint64_t(i) * 7919), std::make_pair(dx, dy));
    ASSERT_TRUE(dx >= -1 && dx <= 1 && dy >= -1 && dy <= 1) << dx << "," << dy;
    ++counts[dy + 1][dx + 1];
    unmoved += dx == 0 && dy == 0;
  }
  EXPECT_NEAR(double(n - unmoved) / n, 0.3 * 8 / 9, 0.01);
  for (int y = 0; y < 3; ++y)
    for (int x = 0; x < 3; ++x) {
      if (x == 1 && y == 1) continue;
      EXPECT_NEAR(double(counts[y][x]) / n, 0.3 / 9, 0.005) << x - 1 << "," << y - 1;
    }
  EXPECT_EQ(draw_shift(0.0, 3, 5), std::make_pair(0, 0));
  int far = 0;
  for (int i = 0; i < 1000; ++i) far += std::abs(draw_shift(1.0, 3, std::uint64_t(i)).first) == 3;
  EXPECT_GT(far, 200);  // 2/7 of the draws
}

}  // namespace
}  // namespace vae
