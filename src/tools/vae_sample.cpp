// vae_sample: generates digits from a checkpoint (chosen digits, a 10 × 10 grid, or an interpolation) as PNG and/or HDF5; one process, no MPI.
#include <boost/program_options.hpp>

#include <cstdio>
#include <exception>
#include <iostream>
#include <sstream>

#include "vae/aligned.hpp"
#include "vae/checkpoint.hpp"
#include "vae/config.hpp"
#include "vae/errors.hpp"
#include "vae/kernels.hpp"
#include "vae/model.hpp"
#include "vae/png.hpp"
#include "vae/rng.hpp"

namespace po = boost::program_options;

namespace {

struct Request {
  std::string checkpoint, png, h5;
  std::vector<int> digits;
  int count = 10, steps = 10;
  bool grid = false;
  std::vector<int> interpolate;  // two digits
  std::uint64_t seed = 0;
  double temperature = 1.0;
};

// Latent rows [n × L] from the seed alone (N(0, temperature² I)), and the decoder input rows [n × dec_in] that pair each with
// label weights (one-hot, or a mix of two digits for an interpolation); labels gets those weights [n × classes].
std::vector<float> inputs_for(const Request& q, const vae::Arch& arch, const vae::Kernels<float>& k, std::size_t& n, std::size_t& columns,
                              std::vector<float>& labels) {
  const std::size_t L = std::size_t(arch.latent), dec_in = arch.dec_in();
  std::vector<std::pair<std::vector<float>, std::size_t>> rows;  // (label weights, noise column)
  if (!q.interpolate.empty()) {
    columns = std::size_t(q.steps);
    for (std::size_t r = 0; r < 4; ++r)
      for (std::size_t c = 0; c < columns; ++c) {
        const float t = columns > 1 ? float(c) / float(columns - 1) : 0.0f;
        std::vector<float> w(std::size_t(arch.classes), 0.0f);
        w[std::size_t(q.interpolate[0])] += 1.0f - t;
        w[std::size_t(q.interpolate[1])] += t;
        rows.push_back({w, r});
      }
  } else {
    std::vector<int> digits = q.grid ? std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9} : q.digits;
    columns = q.grid ? 10 : std::size_t(q.count);
    for (int d : digits)
      for (std::size_t c = 0; c < columns; ++c) {
        std::vector<float> w(std::size_t(arch.classes), 0.0f);
        w[std::size_t(d)] = 1.0f;
        rows.push_back({w, c});
      }
  }
  n = rows.size();
  std::size_t noise_rows = 0;
  for (const auto& r : rows) noise_rows = std::max(noise_rows, r.second + 1);
  std::vector<float> z(noise_rows * L);
  k.gaussian_rows(z.data(), noise_rows, L, vae::stream_key(q.seed, vae::Stream::samples, 1), 0);
  std::vector<float> in(n * dec_in, 0.0f);
  labels.assign(n * std::size_t(arch.classes), 0.0f);
  for (std::size_t i = 0; i < n; ++i) {
    std::copy(rows[i].first.begin(), rows[i].first.end(), labels.begin() + std::ptrdiff_t(i * std::size_t(arch.classes)));
    for (std::size_t j = 0; j < L; ++j) in[i * dec_in + j] = float(q.temperature) * z[rows[i].second * L + j];
    if (arch.conditional)
      for (std::size_t c = 0; c < std::size_t(arch.classes); ++c) in[i * dec_in + L + c] = rows[i].first[c];
  }
  return in;
}

Request parse(int argc, char** argv, bool& help) {
  po::options_description desc(
      "vae_sample: digits from a vae_dist checkpoint\n\nUsage: vae_sample --checkpoint FILE [--grid | --digits 3,7 | --interpolate 3,8] "
      "[--out FILE.png] [--h5 FILE.h5]\n");
  desc.add_options()("help,h", "print this help and exit")("checkpoint", po::value<std::string>(), "checkpoint file (ckpt-eNNNN.h5)")(
      "out", po::value<std::string>(), "PNG to write (samples.png when --h5 is not given either)")(
      "h5", po::value<std::string>(), "HDF5 file to write: /samples/images [n × 28 × 28], /samples/labels, /samples/grid")(
      "grid", po::bool_switch(), "a 10 × 10 grid: row d is digit d, column c the same latent noise")(
      "digits", po::value<std::string>()->default_value(""), "digits to draw, one row each, e.g. 3,7")(
      "count", po::value<int>()->default_value(10), "samples per digit")(
      "interpolate", po::value<std::string>()->default_value(""), "two digits A,B: the label goes from A to B across the columns")(
      "steps", po::value<int>()->default_value(10), "columns of an interpolation")(
      "temperature", po::value<double>()->default_value(1.0), "scale of the latent noise (1: the prior)")(
      "seed", po::value<std::uint64_t>()->default_value(1), "latent noise seed: the same seed gives the same images");
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, desc), vm);
  } catch (const po::error& e) {
    throw vae::UsageError(e.what());
  }
  Request q;
  help = vm.count("help") > 0;
  if (help) {
    std::cout << desc;
    return q;
  }
  if (!vm.count("checkpoint")) throw vae::UsageError("option --checkpoint is required");
  q.checkpoint = vm["checkpoint"].as<std::string>();
  if (vm.count("out")) q.png = vm["out"].as<std::string>();
  if (vm.count("h5")) q.h5 = vm["h5"].as<std::string>();
  if (q.png.empty() && q.h5.empty()) q.png = "samples.png";
  q.grid = vm["grid"].as<bool>();
  q.count = vm["count"].as<int>();
  q.steps = vm["steps"].as<int>();
  q.seed = vm["seed"].as<std::uint64_t>();
  q.temperature = vm["temperature"].as<double>();
  const std::string digits = vm["digits"].as<std::string>(), interp = vm["interpolate"].as<std::string>();
  if (!digits.empty()) q.digits = vae::parse_int_list(digits, "digits");
  if (!interp.empty()) q.interpolate = vae::parse_int_list(interp, "interpolate");
  const int modes = int(q.grid) + int(!q.digits.empty()) + int(!q.interpolate.empty());
  if (modes != 1) throw vae::UsageError("give exactly one of --grid, --digits or --interpolate");
  for (int d : q.digits)
    if (d < 0 || d > 9) throw vae::UsageError("option --digits: " + std::to_string(d) + " is not a digit");
  if (!q.interpolate.empty() && (q.interpolate.size() != 2 || q.interpolate[0] < 0 || q.interpolate[0] > 9 || q.interpolate[1] < 0 ||
                                 q.interpolate[1] > 9))
    throw vae::UsageError("option --interpolate: expected two digits A,B");
  if (q.count < 1 || q.count > 100) throw vae::UsageError("option --count: must be in 1-100");
  if (q.steps < 2 || q.steps > 100) throw vae::UsageError("option --steps: must be in 2-100");
  if (!(q.temperature > 0 && q.temperature <= 10)) throw vae::UsageError("option --temperature: must be in (0, 10]");
  return q;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    bool help = false;
    const Request q = parse(argc, argv, help);
    if (help) return 0;
    const vae::Checkpoint c = vae::read_checkpoint(q.checkpoint);
    if (!c.arch.conditional && (!q.interpolate.empty() || !q.digits.empty()))
      throw vae::UsageError(q.checkpoint + ": the model is unconditional, so it cannot be asked for digits (use --grid)");
    const vae::ParamLayout layout(c.arch);
    const auto kernels = vae::make_kernels(vae::KernelChoice::parallel, 1);
    vae::InferenceNetwork inference(c.arch, layout, *kernels, 100);

    std::size_t n = 0, columns = 0;
    std::vector<float> labels;
    const std::vector<float> inputs = inputs_for(q, c.arch, *kernels, n, columns, labels);
    std::vector<std::uint8_t> images(n * std::size_t(vae::kImagePixels));
    vae::decode_to_pixels(inference.net(), *kernels, c.params.data(), inputs, n, images.data());
    const std::vector<std::uint8_t> grid = vae::tile_images(images.data(), n, columns);
    const std::size_t width = columns * vae::kImageSide, height = grid.size() / width;
    if (!q.png.empty()) {
      vae::write_png_gray(q.png, width, height, grid.data());
      std::printf("wrote %zu samples to %s\n", n, q.png.c_str());
    }
    if (!q.h5.empty()) {
      const char* kind = q.grid ? "grid" : q.digits.empty() ? "interpolate" : "digits";
      vae::write_sample_file(q.h5, {q.checkpoint, kind, q.seed, q.temperature, n, std::size_t(c.arch.classes), images, labels, grid,
                                    width, height});
      std::printf("wrote %zu samples to %s\n", n, q.h5.c_str());
    }
  } catch (const vae::UsageError& e) {
    std::fprintf(stderr, "vae_sample: error: %s\n", e.what());
    return vae::kExitUsage;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vae_sample: error: %s\n", e.what());
    return vae::kExitFailure;
  }
  return 0;
}
