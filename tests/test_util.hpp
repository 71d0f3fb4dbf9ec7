// Test helpers: temporary directories, small synthetic MNIST-format datasets the tests write themselves, the resume check.
#pragma once

#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "env_cap.hpp"
#include "vae/checkpoint.hpp"
#include "vae/communicator.hpp"
#include "vae/config.hpp"
#include "vae/idx.hpp"
#include "vae/trainer.hpp"

namespace vae::test {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "vae_test_XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline void write_bytes(const std::filesystem::path& p, const std::vector<std::uint8_t>& bytes) {
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

inline void write_gzip(const std::filesystem::path& p, const std::vector<std::uint8_t>& bytes) {
  gzFile f = gzopen(p.c_str(), "wb");
  gzwrite(f, bytes.data(), unsigned(bytes.size()));
  gzclose(f);
}

// Digit d is a bright horizontal bar at a d-dependent height over faint noise: learnable in a few steps.
inline void synthetic_images(std::size_t n, std::uint32_t seed, std::vector<std::uint8_t>& pixels, std::vector<std::uint8_t>& labels) {
  std::mt19937 gen(seed);
  pixels.assign(n * kImagePixels, 0);
  labels.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    const int d = int(gen() % 10);
    labels[i] = std::uint8_t(d);
    for (int p = 0; p < kImagePixels; ++p) pixels[i * kImagePixels + std::size_t(p)] = std::uint8_t(gen() % 40);
    const int row = 3 + 2 * d;
    for (int c = 4; c < 24; ++c) pixels[i * kImagePixels + std::size_t(row * kImageSide + c)] = std::uint8_t(200 + gen() % 56);
  }
}

// The four MNIST files under dir, with the standard names.
inline void write_synthetic_mnist(const std::filesystem::path& dir, std::size_t n_train, std::size_t n_test, bool gzip = false) {
  std::vector<std::uint8_t> px, lb;
  auto put = [&](const std::string& name, const std::vector<std::uint8_t>& bytes) {
    if (gzip) write_gzip(dir / (name + ".gz"), bytes);
    else write_bytes(dir / name, bytes);
  };
  synthetic_images(n_train, 1, px, lb);
  put("train-images-idx3-ubyte", make_idx_images(px, std::uint32_t(n_train)));
  put("train-labels-idx1-ubyte", make_idx_labels(lb));
  synthetic_images(n_test, 2, px, lb);
  put("t10k-images-idx3-ubyte", make_idx_images(px, std::uint32_t(n_test)));
  put("t10k-labels-idx1-ubyte", make_idx_labels(lb));
}

// A small CVAE that trains in well under a second on synthetic data in `data`: for tests of the training loop.
// Under a sanitizer or an emulator the v3 training tests run at most VAE_TEST_MAX_STEPS of their `n` steps: the same
// shapes, threads and comparisons, fewer repetitions of them.
inline long test_steps(long n) { return long(env_cap("VAE_TEST_MAX_STEPS", std::size_t(n))); }

inline Config small_config(const std::filesystem::path& data) {
  Config cfg;
  cfg.arch.hidden = {48, 24};
  cfg.arch.latent = 6;
  cfg.batch = 16;
  cfg.lr = 3e-3;
  cfg.digits = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  cfg.data_dir = data.string();
  cfg.progress = Progress::never;
  return cfg;
}

// small_config's conv counterpart: convolutions of 4 and 8 channels (1×28×28 → 4×14×14 → 8×7×7), then dense 32.
inline Config small_conv_config(const std::filesystem::path& data) {
  Config cfg = small_config(data);
  cfg.arch.conv_channels = {4, 8};
  cfg.arch.hidden = {32};
  return cfg;
}

// Trains cfg 4 epochs straight (DIR/straight), and 2 epochs then --resume auto to 4 (DIR/resumed); the resumed run's two
// epochs and its final parameters must equal the straight run's bit for bit. Returns the resumed run's directory.
inline std::filesystem::path expect_resume_bit_for_bit(Config cfg, const Communicator& comm, int threads, const std::filesystem::path& dir) {
  cfg.epochs = 4;
  cfg.run_dir = (dir / "straight").string();
  Trainer straight(cfg, comm, threads);
  straight.run();
  cfg.run_dir = (dir / "resumed").string();
  cfg.epochs = 2;
  {
    Trainer first(cfg, comm, threads);
    first.run();
  }
  cfg.epochs = 4;
  cfg.resume = "auto";
  Trainer second(cfg, comm, threads);
  second.run();
  EXPECT_EQ(second.history().size(), 2u);
  if (second.history().size() != 2) return cfg.run_dir;
  EXPECT_EQ(second.history()[0].epoch, 3);
  for (std::size_t e = 0; e < 2; ++e) EXPECT_EQ(second.history()[e].test_elbo, straight.history()[e + 2].test_elbo) << "epoch " << e + 3;
  EXPECT_EQ(second.history().back().step, straight.history().back().step);
  const auto a = straight.parameters(), b = second.parameters();
  EXPECT_EQ(a.size(), b.size());
  if (a.size() == b.size()) {
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size_bytes()), 0) << "parameters differ after resuming, rank " << comm.rank();
  }
  // the optimizer's state as the last checkpoints hold it (every rank's rows of it, gathered): Adam's moments and the
  // weights' moving average
  if (comm.rank() == 0) {
    const std::filesystem::path last = std::filesystem::path("checkpoints") / "ckpt-e0004.h5";
    const Checkpoint x = read_checkpoint(dir / "straight" / last), y = read_checkpoint(std::filesystem::path(cfg.run_dir) / last);
    EXPECT_TRUE(x.adam_m == y.adam_m && x.adam_v == y.adam_v) << "Adam's moments differ after resuming";
    EXPECT_TRUE(x.ema == y.ema) << "the moving average differs after resuming";
    EXPECT_EQ(x.ema.empty(), cfg.ema_decay == 0);
  }
  return cfg.run_dir;
}

}  // namespace vae::test
