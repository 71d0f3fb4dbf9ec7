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

// The decoder input rows [n × dec_in] (latent noise from the seed alone, times the temperature) and the label weights
// [n × classes] each is decoded with: one-hots of the grid or the chosen digits, or a mix of two digits along an interpolation.
std::vector<float> inputs_for(const Request& q, const vae::Arch& arch, const vae::Kernels<float>& k, std::size_t& n, std::size_t& columns,
                              std::vector<float>& labels) {
  const std::uint64_t key = vae::stream_key(q.seed, vae::Stream::samples, 1);
  if (q.interpolate.empty()) {
    const std::span<const int> digits = q.grid ? std::span<const int>(vae::kAllDigits) : std::span<const int>(q.digits);
    columns = q.grid ? 10 : std::size_t(q.count);
    n = digits.size() * columns;
    return vae::digit_decoder_inputs(arch, k, digits, columns, q.temperature, key, &labels);
  }
  // Four rows, each its own noise; the label goes from digit A to digit B across the columns.
  const std::size_t classes = std::size_t(arch.classes);
  columns = std::size_t(q.steps);
  n = 4 * columns;
  labels.assign(n * classes, 0.0f);
  std::vector<std::size_t> noise(n);
  for (std::size_t i = 0; i < n; ++i) {
    const float t = float(i % columns) / float(columns - 1);
    labels[i * classes + std::size_t(q.interpolate[0])] += 1.0f - t;
    labels[i * classes + std::size_t(q.interpolate[1])] += t;
    noise[i] = i / columns;
  }
  return vae::decoder_inputs(arch, k, labels, noise, q.temperature, key);
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
