// Generation (decoder only) of v3 in fp32 and INT8: samples/s at a batch of 1,024 on 1 and 2 threads, and the latency of
// one sample (batch 1; on the calling thread with 1 thread, its columns split with 2): median and p99 of 10,000 calls.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <vector>

#include "bench_common.hpp"
#include "vae/quantized.hpp"

namespace vae::bench {
namespace {

// v3's decoder with its initial parameters: the real shapes (the arithmetic does not depend on the values).
struct Model {
  Model() : arch(preset_config("v3").arch), layout(arch), params(layout.padded_size()) { init_parameters<float>(layout, 1, params); }
  Arch arch;
  ParamLayout layout;
  std::vector<float> params;
};

std::unique_ptr<Decoder> make_decoder(const Model& m, Kernels<float>& k, bool int8, std::size_t batch) {
  if (int8) return std::make_unique<Int8Decoder>(m.arch, m.layout, m.params.data(), k, batch);
  return std::make_unique<Fp32Decoder>(m.arch, m.layout, m.params.data(), k, batch);
}

void bench_generate(benchmark::State& state, bool int8, int threads) {
  constexpr std::size_t kBatch = 1024;
  const Model m;
  auto k = make_parallel_kernels(threads);
  auto decoder = make_decoder(m, *k, int8, kBatch);
  const std::vector<float> inputs = digit_decoder_inputs(m.arch, *k, all_classes(m.arch), kBatch / 10 + 1, 1.0, 7);
  std::vector<float> logits(kBatch * std::size_t(kImagePixels));
  for (auto _ : state) {
    decoder->decode(inputs.data(), kBatch, logits.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * std::int64_t(kBatch));
}

void bench_latency(benchmark::State& state, bool int8, int threads) {
  constexpr std::size_t kCalls = 10000;
  const Model m;
  auto k = make_parallel_kernels(threads);
  auto decoder = make_decoder(m, *k, int8, 1);
  const std::vector<float> inputs = digit_decoder_inputs(m.arch, *k, all_classes(m.arch), 100, 1.0, 9);
  std::vector<float> logits(kImagePixels);
  std::vector<double> us(kCalls);
  for (auto _ : state) {
    for (std::size_t c = 0; c < kCalls; ++c) {
      const auto t0 = std::chrono::steady_clock::now();
      decoder->decode(inputs.data() + (c % 1000) * m.arch.dec_in(), 1, logits.data());
      us[c] = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
      benchmark::ClobberMemory();
    }
  }
  std::sort(us.begin(), us.end());
  state.counters["median_us"] = us[kCalls / 2];
  state.counters["p99_us"] = us[kCalls * 99 / 100];
}

void register_all() {
  for (bool int8 : {false, true}) {
    const std::string p = int8 ? "int8" : "fp32";
    for (int t : {1, 2})
      benchmark::RegisterBenchmark(("generate/v3/b1024/" + p + "/t" + std::to_string(t)).c_str(), bench_generate, int8, t)->UseRealTime();
    for (int t : {1, 2})
      benchmark::RegisterBenchmark(("latency/v3/b1/" + p + "/t" + std::to_string(t)).c_str(), bench_latency, int8, t)->Iterations(1)->UseRealTime();
  }
}

}  // namespace
}  // namespace vae::bench

int main(int argc, char** argv) {
  vae::bench::register_all();
  return vae::bench::run_benchmarks(argc, argv);
}
