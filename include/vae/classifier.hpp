// The MNIST digit classifier that reads generated digits for vae_eval's conditional accuracy: CNN inference on our kernels.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "vae/aligned.hpp"
#include "vae/kernels.hpp"

namespace vae {

// The weights as scripts/train_classifier.py writes them (PyTorch's layout), with the file's own check values.
struct ClassifierWeights {
  std::vector<float> conv1_w, conv1_b;  // [16 × 1 × 5 × 5], [16]
  std::vector<float> conv2_w, conv2_b;  // [32 × 16 × 5 × 5], [32]
  std::vector<float> fc1_w, fc1_b;      // [64 × 1568] (inputs in PyTorch's channel, row, column order), [64]
  std::vector<float> fc2_w, fc2_b;      // [10 × 64], [10]
  double test_accuracy = 0;             // on the MNIST test set, measured by the training script
  std::vector<std::uint8_t> reference_images;  // [32 × 784] the first test images
  std::vector<float> reference_logits;         // [32 × 10] PyTorch's logits for them
};

// conv 5×5 (1→16, pad 2), ReLU, max-pool 2 | conv 5×5 (16→32, pad 2), ReLU, max-pool 2 | dense 1568→64, ReLU | dense 64→10.
// Each convolution is one matrix product over im2col patches, so it runs on the same GEMM kernels as the VAE.
class Classifier {
 public:
  Classifier(const ClassifierWeights& w, int threads, std::size_t max_batch = 100);

  // logits [n × 10] of n images of 784 grey levels.
  void logits(const std::uint8_t* images, std::size_t n, float* out);
  // The most likely digit of each image.
  std::vector<int> predict(const std::uint8_t* images, std::size_t n);
  // The penultimate layer [n × kFeatures]: dense 1568→64 after its ReLU, what vae_eval's Fréchet distance compares.
  void features(const std::uint8_t* images, std::size_t n, float* out);
  static constexpr std::size_t kFeatures = 64;
  // logits [n × 10] and features [n × 64] in one pass, each skipped when nullptr
  void run(const std::uint8_t* images, std::size_t n, float* logits, float* features);
  // The most likely digit of each of n rows of logits [n × 10].
  static std::vector<int> most_likely(const float* logits, std::size_t n);

 private:

  std::unique_ptr<Kernels<float>> k_;
  std::size_t max_batch_;
  // Weights rearranged for row-major products: w [patch × channels], fc1 rows in our (row, column, channel) order.
  std::vector<float> w1_, b1_, w2_, b2_, w3_, b3_, w4_, b4_;
  std::vector<float> patches_, conv_, pooled1_, pooled2_, hidden_;
  Arena workspace_;
};

}  // namespace vae
