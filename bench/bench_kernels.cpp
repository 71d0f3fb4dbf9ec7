// GFLOP/s of every dense-layer product of v1, v2, v3 at batch 64 and 256: our kernels in fp32 and bf16 (packing their
// operands, and as the step runs them), OpenBLAS and the reference, 1 and 2 threads, and the machine's fp32 and bf16
// ceilings; and of every convolution product of the conv preset, ours and the reference. The forward product is measured as OpenBLAS
// computes it (no activation), and again with the layer's activation fused.
#include <benchmark/benchmark.h>

#include <memory>
#include <thread>
#include <vector>

#include "bench_common.hpp"
#include "vae/aligned.hpp"
#include "vae/kernels.hpp"

namespace vae::bench {
namespace {

// Our product; for the forward pass with the bias only (as OpenBLAS computes it) unless `fused` keeps the layer's activation.
void bench_ours(benchmark::State& state, Product p, int threads, bool fused, Precision precision) {
  if (!fused) p.act = Activation::identity;
  auto k = make_parallel_kernels(threads, "", precision);
  AlignedBuffer<std::byte> ws(k->workspace_bytes(p.batch, std::max(p.in, p.out)));
  k->bind_workspace(ws.span(), p.batch, std::max(p.in, p.out));
  Operands o(p);
  for (auto _ : state) {
    run_ours(*k, p, o);
    benchmark::ClobberMemory();
  }
  state.counters["FLOPS"] = benchmark::Counter(p.flops(), benchmark::Counter::kIsIterationInvariantRate);
}

// The bf16 product as the step runs it: W from the optimizer's weight copy, X and dY read from their bf16 shadows, and Y
// or dX written with theirs (as the step's epilogues write them), so that nothing is packed.
void bench_ours_step(benchmark::State& state, Product p, int threads) {
  p.act = Activation::identity;
  auto k = make_parallel_kernels(threads, "", Precision::bf16);
  AlignedBuffer<std::byte> ws(k->workspace_bytes(p.batch, std::max(p.in, p.out)));
  k->bind_workspace(ws.span(), p.batch, std::max(p.in, p.out));
  Operands o(p);
  const std::size_t fwd = round_up(k->bf16_panel_words(p.in, p.out), 16), trans = k->bf16_panel_words(p.out, p.in);
  std::vector<std::uint32_t> copy_words(fwd + trans);
  const WeightCopy copy{o.w.data(), copy_words.data(), {{0, p.in, p.out, 0, fwd, true}}, fwd + trans};
  k->refresh_weight_copy(copy);
  k->bind_weight_copy(&copy);
  using Use = Bf16Shadow<float>::Use;
  std::vector<std::vector<std::uint32_t>> words;
  std::vector<Bf16Shadow<float>> shadows;
  auto shadow = [&](const float* t, std::size_t cols, Use use) {
    words.emplace_back(k->bf16_shadow_words(p.batch, cols), 0x3c243c24u);  // pairs of 0.01
    if (!words.back().empty()) shadows.push_back({t, p.batch, cols, use, words.back().data()});
  };
  words.reserve(4);
  shadow(o.x.data(), p.in, Use::activation);
  shadow(o.y.data(), p.out, Use::activation);
  shadow(o.dy.data(), p.out, Use::gradient);
  shadow(o.dx.data(), p.cols, Use::gradient);
  k->bind_bf16_shadows(shadows);
  for (auto _ : state) {
    run_ours(*k, p, o);
    benchmark::ClobberMemory();
  }
  state.counters["FLOPS"] = benchmark::Counter(p.flops(), benchmark::Counter::kIsIterationInvariantRate);
}

void bench_openblas(benchmark::State& state, Product p, int threads) {
  openblas_set_num_threads(threads);
  Operands o(p);
  for (auto _ : state) {
    run_openblas(p, o);
    benchmark::ClobberMemory();
  }
  state.counters["FLOPS"] = benchmark::Counter(p.flops(), benchmark::Counter::kIsIterationInvariantRate);
}

void bench_reference(benchmark::State& state, Product p) {
  ReferenceKernels<float> k;
  Operands o(p);
  for (auto _ : state) {
    run_ours(k, p, o);
    benchmark::ClobberMemory();
  }
  state.counters["FLOPS"] = benchmark::Counter(p.flops(), benchmark::Counter::kIsIterationInvariantRate);
}

// One convolution product of the conv preset, on our kernels or the reference, its scratch bound as the trainer binds it.
void bench_conv(benchmark::State& state, ConvProduct p, int threads, bool reference) {
  std::unique_ptr<Kernels<float>> k = reference ? std::make_unique<ReferenceKernels<float>>() : make_parallel_kernels(threads, "", Precision::fp32);
  const ConvSizes sizes = ConvSizes{}.add(p.shape);
  AlignedBuffer<std::byte> ws(std::max<std::size_t>(k->workspace_bytes(p.batch, 1, sizes), 1));
  k->bind_workspace(ws.span(), p.batch, 1, sizes);
  ConvOperands o(p);
  for (auto _ : state) {
    run_conv(*k, p, o);
    benchmark::ClobberMemory();
  }
  state.counters["FLOPS"] = benchmark::Counter(p.flops(), benchmark::Counter::kIsIterationInvariantRate);
}

// Independent multiply-add chains on every thread at once: what the instruction set can do at most.
void bench_peak(benchmark::State& state, Precision precision, int threads) {
  // milliseconds of work per thread (about 2 for fp32 and vdpbf16ps, 20 for AMX), so that starting a thread is noise
  const std::size_t kIterations = 1u << 20;
  double flops = 0;
  for (auto _ : state) {
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back([&] { peak_loop_flops(precision, kIterations); });
    flops = threads * peak_loop_flops(precision, kIterations);
    for (auto& t : pool) t.join();
  }
  if (flops == 0) state.SkipWithError("no native bf16 product on this CPU");
  state.counters["FLOPS"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
}

void register_all() {
  for (int t : {1, 2}) {
    benchmark::RegisterBenchmark(("peak/fp32/t" + std::to_string(t)).c_str(), bench_peak, Precision::fp32, t)->UseRealTime();
    benchmark::RegisterBenchmark(("peak/bf16/t" + std::to_string(t)).c_str(), bench_peak, Precision::bf16, t)->UseRealTime();
  }
  for (const char* preset : {"v1", "v2", "v3"}) {
    const Arch arch = preset_config(preset).arch;
    for (std::size_t batch : {32, 64, 128, 256})
      for (const Product& p : step_products(arch, batch)) {
        const std::string base = std::string("gemm/") + preset + "/b" + std::to_string(batch) + "/" + p.layer + "/" + op_name(p.op);
        for (int t : {1, 2}) {
          const std::string th = "/t" + std::to_string(t);
          benchmark::RegisterBenchmark((base + "/ours" + th).c_str(), bench_ours, p, t, false, Precision::fp32)->UseRealTime();
          benchmark::RegisterBenchmark((base + "/ours_bf16" + th).c_str(), bench_ours, p, t, false, Precision::bf16)->UseRealTime();
          benchmark::RegisterBenchmark((base + "/ours_bf16_step" + th).c_str(), bench_ours_step, p, t)->UseRealTime();
          if (p.op == Op::forward && p.act != Activation::identity)
            benchmark::RegisterBenchmark((base + "/ours_fused" + th).c_str(), bench_ours, p, t, true, Precision::fp32)->UseRealTime();
          benchmark::RegisterBenchmark((base + "/openblas/t" + std::to_string(t)).c_str(), bench_openblas, p, t)->UseRealTime();
        }
        benchmark::RegisterBenchmark((base + "/reference/t1").c_str(), bench_reference, p)->UseRealTime()->Iterations(2);
      }
  }
  const Arch conv = preset_config("conv").arch;
  for (std::size_t batch : {64, 256})
    for (const ConvProduct& p : conv_step_products(conv, batch)) {
      const std::string base = "conv/conv/b" + std::to_string(batch) + "/" + p.layer + "/" + op_name(p.op);
      for (int t : {1, 2}) benchmark::RegisterBenchmark((base + "/ours/t" + std::to_string(t)).c_str(), bench_conv, p, t, false)->UseRealTime();
      benchmark::RegisterBenchmark((base + "/reference/t1").c_str(), bench_conv, p, 1, true)->UseRealTime()->Iterations(2);
    }
}

}  // namespace
}  // namespace vae::bench

int main(int argc, char** argv) {
  vae::bench::register_all();
  return vae::bench::run_benchmarks(argc, argv);
}
