// Ping-pong between ranks 0 and 1 (put them on two nodes): one-way time per message size, and the α–β fit of the link.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "vae/communicator.hpp"
#include "vae/kernels.hpp"

int main(int argc, char** argv) {
  vae::MpiSession mpi(argc, argv);
  const vae::Communicator comm = vae::Communicator::world();
  if (comm.size() != 2) {
    if (comm.rank() == 0) std::fprintf(stderr, "pingpong: error: run with 2 ranks, one per node\n");
    return 2;
  }
  const int peer = 1 - comm.rank();
  std::vector<std::byte> buffer(std::size_t(16) << 20);
  std::vector<std::pair<double, double>> points;  // (bytes, one-way seconds)
  if (comm.rank() == 0) std::printf("{\"points\": [");
  for (std::size_t bytes = 8; bytes <= buffer.size(); bytes *= 4) {
    const std::span<std::byte> msg(buffer.data(), bytes);
    const int reps = bytes < (std::size_t(1) << 20) ? 200 : 20;
    std::vector<double> times;
    for (int r = 0; r < reps + 5; ++r) {
      comm.barrier();
      const auto t0 = std::chrono::steady_clock::now();
      if (comm.rank() == 0) {
        comm.send(msg, peer);
        comm.receive(msg, peer);
      } else {
        comm.receive(msg, peer);
        comm.send(msg, peer);
      }
      if (r >= 5) times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 2);
    }
    std::nth_element(times.begin(), times.begin() + std::ptrdiff_t(times.size() / 2), times.end());
    const double median = times[times.size() / 2];
    points.push_back({double(bytes), median});
    if (comm.rank() == 0) std::printf("%s[%zu, %.9g]", points.size() > 1 ? ", " : "", bytes, median);
  }
  // Least squares t = α + n/β over the points (the small sizes fix α, the large ones β).
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (const auto& [x, y] : points) {
    sx += x;
    sy += y;
    sxx += x * x;
    sxy += x * y;
  }
  const double n = double(points.size()), slope = (n * sxy - sx * sy) / (n * sxx - sx * sx);
  const double alpha = points.front().second;  // an 8-byte message is all latency
  // The bf16 wire's own cost per gradient float on this core: rounding it to bf16, the sum on arrival, widening it back
  // (v3's gradient, so the caches see what a step gives them).
  const std::size_t floats = 1'548'560;
  std::vector<float> g(floats, 0.37f);
  std::vector<std::uint16_t> h(floats), other(floats, 0x3f80);
  std::vector<double> conv;
  for (int r = 0; r < 25; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    vae::to_bf16(g.data(), h.data(), floats);
    vae::add_bf16(other.data(), h.data(), floats);
    vae::from_bf16(h.data(), g.data(), floats);
    conv.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / double(floats));
  }
  std::nth_element(conv.begin(), conv.begin() + 12, conv.end());
  if (comm.rank() == 0)
    std::printf("], \"alpha_s\": %.9g, \"beta_bytes_per_s\": %.9g, \"bf16_seconds_per_float\": %.9g}\n", alpha, 1.0 / slope,
                conv[12]);
  return 0;
}
