// Samples/s of the whole training step (data, forward, loss, backward, allreduce, Adam), fp32 and bf16 products, against OpenBLAS doing only the step's GEMMs.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <memory>

#include "bench_common.hpp"
#include "vae/communicator.hpp"
#include "vae/trainer.hpp"

namespace vae::bench {
namespace {

std::string data_dir() {
  const char* d = std::getenv("VAE_DATA_DIR");
  return d ? d : "data/mnist";
}

void bench_step(benchmark::State& state, std::string preset, int batch, int threads, Precision precision) {
  Config cfg = preset_config(preset);
  cfg.batch = batch;
  cfg.precision = precision;
  cfg.data_dir = data_dir();
  cfg.progress = Progress::never;
  cfg.run_dir = (std::filesystem::temp_directory_path() / "vae_bench_step").string();
  const Communicator self = Communicator::self();
  Trainer trainer(cfg, self, threads);
  trainer.initialize();
  const long per_epoch = trainer.steps_per_epoch();
  long s = 0;
  trainer.step(0, s++, 1.0, cfg.lr);
  for (auto _ : state) {
    trainer.step(int(s / per_epoch), s % per_epoch, 1.0, cfg.lr);
    ++s;
  }
  state.SetItemsProcessed(state.iterations() * batch);
  state.counters["pool_bytes"] = double(trainer.pool_bytes());
}

void bench_gemm_only(benchmark::State& state, std::string preset, int batch, int threads) {
  openblas_set_num_threads(threads);
  const std::vector<Product> products = step_products(preset_config(preset).arch, std::size_t(batch));
  std::vector<std::unique_ptr<Operands>> operands;
  for (const Product& p : products) operands.push_back(std::make_unique<Operands>(p));
  for (auto _ : state) {
    for (std::size_t i = 0; i < products.size(); ++i) run_openblas(products[i], *operands[i]);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * batch);
}

void register_all() {
  for (const char* preset : {"v1", "v2", "v3"})
    for (int batch : {64, 256})
      for (int t : {1, 2}) {
        const std::string name = std::string("step/") + preset + "/b" + std::to_string(batch) + "/t" + std::to_string(t);
        benchmark::RegisterBenchmark((name + "/ours").c_str(), bench_step, preset, batch, t, Precision::fp32)->UseRealTime();
        benchmark::RegisterBenchmark((name + "/ours_bf16").c_str(), bench_step, preset, batch, t, Precision::bf16)->UseRealTime();
        benchmark::RegisterBenchmark((name + "/openblas_gemms").c_str(), bench_gemm_only, preset, batch, t)->UseRealTime();
      }
  // the conv CVAE: no OpenBLAS figure (its products are not GEMMs)
  for (int batch : {64, 256})
    for (int t : {1, 2}) {
      const std::string name = "step/conv/b" + std::to_string(batch) + "/t" + std::to_string(t) + "/ours";
      benchmark::RegisterBenchmark(name.c_str(), bench_step, std::string("conv"), batch, t, Precision::fp32)->UseRealTime();
      benchmark::RegisterBenchmark((name + "_bf16").c_str(), bench_step, std::string("conv"), batch, t, Precision::bf16)->UseRealTime();
    }
}

}  // namespace
}  // namespace vae::bench

int main(int argc, char** argv) {
  vae::MpiSession mpi(argc, argv);
  vae::bench::register_all();
  return vae::bench::run_benchmarks(argc, argv);
}
