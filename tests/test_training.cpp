// The training step as a whole: no heap allocation in the steady state, and optimized kernels train like the reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <fstream>
#include <cstring>
#include <cstdlib>
#include <new>

#include "test_util.hpp"
#include "vae/checkpoint.hpp"
#include "vae/communicator.hpp"
#include "vae/config.hpp"
#include "vae/trainer.hpp"

// Every allocation in this process goes through these: C++ operator new, and malloc and its relatives (interposed over
// glibc's), so a step that allocates is counted whichever library (the trainer, TBB, MPI, the standard library) does it.
namespace {
std::atomic<long> g_allocations{0};
std::atomic<bool> g_counting{false};

void count() {
  if (g_counting.load(std::memory_order_relaxed)) g_allocations.fetch_add(1, std::memory_order_relaxed);
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
}  // namespace
// The sanitizer runtime's (GCC ships no header declaring it).
extern "C" int __sanitizer_install_malloc_and_free_hooks(void (*on_malloc)(const volatile void*, std::size_t),
                                                         void (*on_free)(const volatile void*));
namespace {
// Under a sanitizer its allocator serves every allocation, and reports each one to this hook.
void on_allocation(const volatile void*, std::size_t) { count(); }
void on_free(const volatile void*) {}
[[maybe_unused]] const int g_hooks_installed = __sanitizer_install_malloc_and_free_hooks(on_allocation, on_free);
}  // namespace
#else
void* counted(std::size_t n, std::size_t align) {
  void* p = align > alignof(std::max_align_t) ? std::aligned_alloc(align, (n + align - 1) / align * align) : std::malloc(n ? n : 1);
  if (!p) throw std::bad_alloc();
  return p;
}
}  // namespace

extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);

void* malloc(std::size_t n) {
  count();
  return __libc_malloc(n);
}
void* calloc(std::size_t n, std::size_t size) {
  count();
  return __libc_calloc(n, size);
}
void* realloc(void* p, std::size_t n) {
  count();
  return __libc_realloc(p, n);
}
void* aligned_alloc(std::size_t align, std::size_t n) {
  count();
  return __libc_memalign(align, n);
}
int posix_memalign(void** out, std::size_t align, std::size_t n) {
  count();
  *out = __libc_memalign(align, n);
  return *out ? 0 : ENOMEM;
}
}

void* operator new(std::size_t n) { return counted(n, 0); }
void* operator new[](std::size_t n) { return counted(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) { return counted(n, std::size_t(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return counted(n, std::size_t(a)); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
#endif

namespace vae {
namespace {

class Training : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    test::write_synthetic_mnist(dir_->path(), 1024, 128);
  }
  static void TearDownTestSuite() { delete dir_; }

  // The v3 architecture at batch 64 on synthetic images: the real shapes, without the real data.
  static Config v3_config() {
    Config cfg;
    cfg.arch.hidden = {640, 320};
    cfg.arch.latent = 128;
    cfg.batch = 64;
    cfg.lr = 8e-4;
    cfg.epochs = 1;
    cfg.digits = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    cfg.data_dir = dir_->path().string();
    cfg.run_dir = (dir_->path() / "run").string();
    cfg.progress = Progress::never;
    // One process, so no peer to lose; under qemu a conv step at batch 64 can take longer than the watchdog's 30 s.
    cfg.comm_timeout = 0;
    return cfg;
  }

  // The conv preset's model at batch 64 on the same images.
  static Config conv_config() {
    Config cfg = v3_config();
    cfg.arch.conv_channels = {32, 64};
    cfg.arch.hidden = {512};
    cfg.arch.latent = 32;
    cfg.lr = 1e-3;
    return cfg;
  }

  static test::TempDir* dir_;
};
test::TempDir* Training::dir_ = nullptr;

// Steps 2 … `steps` of cfg on `threads` threads allocate nothing: the first may start threads and warm caches.
void expect_steps_allocate_nothing(const Config& cfg, int threads, long steps) {
  const Communicator self = Communicator::self();
  Trainer trainer(cfg, self, threads);
  trainer.initialize();
  trainer.step(0, 0, 1.0, cfg.lr);
  g_allocations = 0;
  g_counting = true;
  for (long s = 1; s < steps; ++s) trainer.step(0, s, 1.0, cfg.lr);
  g_counting = false;
  EXPECT_EQ(g_allocations.load(), 0) << "heap allocations in steps 2.." << steps << " with " << threads << " threads, "
                                     << precision_name(cfg.precision) << (cfg.arch.convolutional() ? ", conv model" : "");
}

// cfg for 20 steps with the optimized kernels on 2 threads follows the reference kernels' losses to 1e-4.
void expect_trains_like_reference(Config cfg) {
  const Communicator self = Communicator::self();
  cfg.max_steps = test::test_steps(20);
  cfg.epochs = 2;
  cfg.kernels = KernelChoice::reference;
  Trainer reference(cfg, self, 1);
  reference.run();
  cfg.kernels = KernelChoice::parallel;
  Trainer fast(cfg, self, 2);
  fast.run();
  const std::size_t steps = std::size_t(cfg.max_steps);
  ASSERT_EQ(reference.step_losses().size(), steps);
  ASSERT_EQ(fast.step_losses().size(), steps);
  for (std::size_t s = 0; s < steps; ++s)
    EXPECT_NEAR(fast.step_losses()[s], reference.step_losses()[s], 1e-4 * std::abs(reference.step_losses()[s])) << "step " << s + 1;
  if (steps > 1) {
    EXPECT_LT(fast.step_losses().back(), fast.step_losses().front());
  }
}

// The steps of a steady-state check: n, or at most 3 (one to warm up, the rest counted) when VAE_TEST_MAX_STEPS caps the
// run under an emulator or a sanitizer, where one conv step at batch 64 takes 15 s.
long steady_steps(long n) {
  const long capped = test::test_steps(n);
  return capped < n ? std::min(capped, 3L) : n;
}

TEST_F(Training, SteadyStateStepAllocatesNothing) {
  for (Precision precision : {Precision::fp32, Precision::bf16})
    for (int threads : {1, 2}) {
      Config cfg = v3_config();
      cfg.precision = precision;
      expect_steps_allocate_nothing(cfg, threads, steady_steps(12));
    }
}

TEST_F(Training, ConvSteadyStateStepAllocatesNothing) {
  for (Precision precision : {Precision::fp32, Precision::bf16})
    for (int threads : {1, 2}) {
      Config cfg = conv_config();
      cfg.precision = precision;
      expect_steps_allocate_nothing(cfg, threads, steady_steps(6));
    }
}

// The conv model's optimized kernels (im2col products on our GEMM) train like the plain reference convolutions.
TEST_F(Training, ConvOptimizedKernelsTrainLikeReference) {
  Config cfg = test::small_conv_config(dir_->path());
  cfg.run_dir = (dir_->path() / "conv_run").string();
  expect_trains_like_reference(cfg);
}

TEST_F(Training, ConvResumeContinuesBitForBit) {
  // three digits' images: 19 steps an epoch, not 64, which qemu's 8 epochs of convolutions need
  Config cfg = test::small_conv_config(dir_->path());
  cfg.digits = {0, 1, 2};
  const std::filesystem::path resumed = test::expect_resume_bit_for_bit(cfg, Communicator::self(), 2, dir_->path() / "conv");
  // the checkpoint holds the convolutions in PyTorch's layout and names the channels
  const Checkpoint c = read_checkpoint(resumed / "checkpoints" / "ckpt-e0004.h5");
  EXPECT_EQ(c.arch.conv_channels, (std::vector<int>{4, 8}));
}

TEST_F(Training, CountingAllocatorSeesAllocations) {
  g_allocations = 0;
  g_counting = true;
  auto* v = new std::vector<int>(100);
  g_counting = false;
  delete v;
  EXPECT_GE(g_allocations.load(), 2);
}

TEST_F(Training, OptimizedKernelsTrainLikeReference) { expect_trains_like_reference(v3_config()); }

// bf16 products train like their reference (the same rounded operands, sums in another order) and close to fp32, over
// 20 steps, or at least min_steps where VAE_TEST_MAX_STEPS caps the run: as many as the descent below needs to show.
void expect_bf16_trains_like_reference_and_near_fp32(Config cfg, long min_steps) {
  const Communicator self = Communicator::self();
  cfg.max_steps = std::max(min_steps, test::test_steps(20));
  cfg.epochs = 2;
  Trainer fp32(cfg, self, 2);
  fp32.run();
  cfg.precision = Precision::bf16;
  cfg.kernels = KernelChoice::reference;
  Trainer reference(cfg, self, 1);
  reference.run();
  cfg.kernels = KernelChoice::parallel;
  Trainer fast(cfg, self, 2);
  fast.run();
  const std::size_t steps = std::size_t(cfg.max_steps);
  ASSERT_EQ(fast.step_losses().size(), steps);
  ASSERT_EQ(reference.step_losses().size(), steps);
  for (std::size_t s = 0; s < steps; ++s) {
    EXPECT_NEAR(fast.step_losses()[s], reference.step_losses()[s], 1e-3 * std::abs(reference.step_losses()[s])) << "step " << s + 1;
    EXPECT_NEAR(fast.step_losses()[s], fp32.step_losses()[s], 2e-2 * std::abs(fp32.step_losses()[s])) << "step " << s + 1;
  }
  EXPECT_LT(fast.step_losses().back(), 0.9 * fast.step_losses().front());  // it learns
}

// The v3 shapes: 5 steps show the descent.
TEST_F(Training, Bf16TrainsLikeItsReferenceAndNearFp32) { expect_bf16_trains_like_reference_and_near_fp32(v3_config(), 5); }

// The small conv model: its convolutions' bf16 products, and the dense products of a conv model, which pack their
// operands (a convolution writes no shadow).
TEST_F(Training, ConvBf16TrainsLikeItsReferenceAndNearFp32) {
  Config cfg = test::small_conv_config(dir_->path());
  cfg.run_dir = (dir_->path() / "conv_bf16_run").string();
  expect_bf16_trains_like_reference_and_near_fp32(cfg, 20);  // a batch of 16: 5 steps fall short of 10%
}

TEST_F(Training, Bf16ResumeContinuesBitForBit) {
  Config cfg = test::small_config(dir_->path());
  cfg.precision = Precision::bf16;
  const std::filesystem::path resumed = test::expect_resume_bit_for_bit(cfg, Communicator::self(), 2, dir_->path() / "bf16");
  EXPECT_EQ(read_checkpoint(resumed / "checkpoints" / "ckpt-e0004.h5").state.precision, Precision::bf16);
}

TEST_F(Training, ConvBf16ResumeContinuesBitForBit) {
  Config cfg = test::small_conv_config(dir_->path());
  cfg.digits = {0, 1, 2};
  cfg.precision = Precision::bf16;
  const std::filesystem::path resumed = test::expect_resume_bit_for_bit(cfg, Communicator::self(), 2, dir_->path() / "conv_bf16");
  EXPECT_EQ(read_checkpoint(resumed / "checkpoints" / "ckpt-e0004.h5").state.precision, Precision::bf16);
}

// After one update the moving average is p1 + d·(p0 − p1), from the drawn weights p0 and the updated p1, element by
// element.
TEST_F(Training, EmaAfterOneUpdateByHand) {
  Config cfg = test::small_config(dir_->path());
  cfg.ema_decay = 0.75;
  cfg.epochs = 1;
  cfg.max_steps = 1;
  cfg.run_dir = (dir_->path() / "ema_one_step").string();
  const Communicator self = Communicator::self();  // the trainer keeps a reference to it
  Trainer t(cfg, self, 2);
  t.run();
  const ParamLayout layout(cfg.arch);
  std::vector<float> p0(layout.padded_size());
  init_parameters<float>(layout, cfg.seed, p0);
  const auto p1 = t.parameters(), ema = t.ema();
  ASSERT_EQ(ema.size(), p1.size());
  std::size_t moved = 0;
  for (std::size_t i = 0; i < p1.size(); ++i) {
    ASSERT_EQ(ema[i], p1[i] + 0.75f * (p0[i] - p1[i])) << "parameter " << i;
    moved += p0[i] != p1[i];
  }
  EXPECT_GT(moved, p1.size() / 2) << "the update moved too few weights for the check to mean anything";
}

// Over a resume the moving average continues bit for bit, and the checkpoint records it and its decay.
TEST_F(Training, EmaResumeContinuesBitForBit) {
  Config cfg = test::small_config(dir_->path());
  cfg.ema_decay = 0.75;
  const std::filesystem::path resumed = test::expect_resume_bit_for_bit(cfg, Communicator::self(), 2, dir_->path() / "ema");
  const Checkpoint c = read_checkpoint(resumed / "checkpoints" / "ckpt-e0004.h5");
  EXPECT_DOUBLE_EQ(c.state.adam.ema_decay, 0.75);
  EXPECT_NE(c.ema, c.params);
}

// Dropout's masks are keyed by the step: a resumed run draws the ones the straight run drew.
TEST_F(Training, DropoutResumeContinuesBitForBit) {
  Config cfg = test::small_config(dir_->path());
  cfg.dropout = 0.3;
  test::expect_resume_bit_for_bit(cfg, Communicator::self(), 2, dir_->path() / "dropout");
}

// The shifts are keyed by the step too.
TEST_F(Training, ShiftResumeContinuesBitForBit) {
  Config cfg = test::small_config(dir_->path());
  cfg.shift = 0.5;
  cfg.shift_pixels = 2;
  test::expect_resume_bit_for_bit(cfg, Communicator::self(), 2, dir_->path() / "shift");
}

// An image's draws of z take ε from (step, row) and the images their binarisation from (step, image), as before.
TEST_F(Training, ImportanceWeightedResumeContinuesBitForBit) {
  Config cfg = test::small_config(dir_->path());
  cfg.iw_train = 3;
  cfg.binarize = true;
  test::expect_resume_bit_for_bit(cfg, Communicator::self(), 2, dir_->path() / "iw");
}

// The masks change what the network trains on, and the conv model with them (and with shifts) steps without allocating.
TEST_F(Training, DropoutChangesTheStepsAndAllocatesNothing) {
  Config cfg = test::small_conv_config(dir_->path());
  cfg.max_steps = 3;
  cfg.run_dir = (dir_->path() / "dropout_steps").string();
  const Communicator self = Communicator::self();
  Trainer plain(cfg, self, 2);
  plain.run();
  cfg.dropout = 0.3;
  Trainer dropped(cfg, self, 2);
  dropped.run();
  ASSERT_EQ(plain.step_losses().size(), 3u);
  ASSERT_EQ(dropped.step_losses().size(), 3u);
  // the first step's forward pass already differs (same weights, masked units)
  EXPECT_NE(plain.step_losses()[0], dropped.step_losses()[0]);
  EXPECT_NEAR(plain.step_losses()[0], dropped.step_losses()[0], 0.1 * plain.step_losses()[0]);
  Config conv = conv_config();
  conv.dropout = 0.3;
  conv.shift = 0.5;
  expect_steps_allocate_nothing(conv, 2, steady_steps(4));
  Config weighted = conv_config();
  weighted.iw_train = 3;
  expect_steps_allocate_nothing(weighted, 2, steady_steps(4));
}

// 4 epochs straight, and 2 epochs then --resume auto to 4, give the same parameters bit for bit and the same epochs.
TEST_F(Training, ResumeContinuesBitForBit) {
  const std::filesystem::path resumed = test::expect_resume_bit_for_bit(test::small_config(dir_->path()), Communicator::self(), 2, dir_->path());
  // The newest checkpoints are kept, older ones pruned.
  std::size_t kept = 0;
  for (const auto& e : std::filesystem::directory_iterator(resumed / "checkpoints")) kept += e.path().extension() == ".h5";
  EXPECT_EQ(kept, 3u);

  // The last checkpoint carries every epoch's metrics (those before the resume too) and a sample grid, also as a PNG.
  const std::filesystem::path last = resumed / "checkpoints" / "ckpt-e0004.h5";
  const Checkpoint c = read_checkpoint(last);
  ASSERT_EQ(c.metrics.size(), 4u);
  for (int e = 0; e < 4; ++e) EXPECT_EQ(c.metrics[std::size_t(e)].epoch, e + 1);
  const Checkpoint straight = read_checkpoint(dir_->path() / "straight" / "checkpoints" / "ckpt-e0004.h5");
  EXPECT_EQ(c.metrics[3].test_elbo, straight.metrics[3].test_elbo);
  std::ifstream png(std::filesystem::path(last).replace_extension(".png"), std::ios::binary);
  char sig[8] = {};
  png.read(sig, 8);
  EXPECT_EQ(std::string(sig, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  const std::string gif = (dir_->path() / "grid.gif").string();
  EXPECT_EQ(std::system(("h52gif " + last.string() + " " + gif + " -i samples/grid > /dev/null 2>&1").c_str()), 0);
  EXPECT_GT(std::filesystem::file_size(gif), 1000u);
}

}  // namespace
}  // namespace vae

int main(int argc, char** argv) {
  vae::MpiSession mpi(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
