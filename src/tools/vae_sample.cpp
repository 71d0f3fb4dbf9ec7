// vae_sample: generates digits from a checkpoint (chosen digits, a grid of every class, an interpolation or a latent traversal) as PNG and/or HDF5; one process, no MPI.
#include <boost/program_options.hpp>

#include <cstdio>
#include <algorithm>
#include <exception>
#include <functional>
#include <iostream>
#include <sstream>

#include "vae/aligned.hpp"
#include "vae/checkpoint.hpp"
#include "vae/config.hpp"
#include "vae/errors.hpp"
#include "vae/tool_options.hpp"
#include "vae/kernels.hpp"
#include "vae/quantized.hpp"
#include "vae/model.hpp"
#include "vae/png.hpp"
#include "vae/rng.hpp"

namespace po = boost::program_options;

namespace {

constexpr std::size_t kMaxTiled = 10'000;  // samples drawn into a PNG or an HDF5 grid

struct Request {
  std::string checkpoint, png, h5, weights;
  std::vector<int> digits;
  int count = 10, steps = 10;
  bool grid = false;
  std::vector<int> interpolate;  // two digits
  std::vector<int> traverse;     // latent dimensions, one row each
  std::uint64_t seed = 0;
  double temperature = 1.0;
  bool int8 = false;  // --precision int8: the INT8 decoder (vae/quantized.hpp)
};

// Which sample is which: row i of the output is decoded from label weights labels_of(i) [classes] and noise row noise_of(i),
// which latent_of(i, z [L]), if given, then changes.
struct Layout {
  std::size_t n = 0, columns = 0;
  std::function<void(std::size_t i, float* weights)> labels_of;
  std::function<std::size_t(std::size_t i)> noise_of;
  std::function<void(std::size_t i, float* z)> latent_of;
};

constexpr double kTraverseRange = 3.0;  // a traversal sweeps its dimension over [−3, 3], three prior standard deviations

// One row per digit of the grid or of --digits, sample c of every row sharing its noise; or four rows along an
// interpolation, each its own noise, the label going from digit A to digit B across the columns.
Layout layout_for(const Request& q, const vae::Arch& arch) {
  Layout out;
  if (!q.traverse.empty()) {
    // Row r sweeps dimension traverse[r] across the columns; every sample shares one draw of the other dimensions and
    // the label of --digits.
    out.columns = std::size_t(q.steps);
    out.n = q.traverse.size() * out.columns;
    const std::size_t columns = out.columns;
    const int digit = q.digits.empty() ? -1 : q.digits[0];
    out.labels_of = [digit](std::size_t, float* w) {
      if (digit >= 0) w[digit] = 1.0f;
    };
    out.noise_of = [](std::size_t) { return std::size_t(0); };
    out.latent_of = [columns, dims = q.traverse](std::size_t i, float* z) {
      const double t = double(i % columns) / double(columns - 1);
      z[dims[i / columns]] = float(kTraverseRange * (2 * t - 1));
    };
    return out;
  }
  if (q.interpolate.empty()) {
    std::vector<int> digits(q.digits);
    if (q.grid) digits.assign(vae::all_classes(arch).begin(), vae::all_classes(arch).end());
    out.columns = q.grid ? 10 : std::size_t(q.count);
    out.n = digits.size() * out.columns;
    const std::size_t columns = out.columns;
    out.labels_of = [digits, columns](std::size_t i, float* w) { w[digits[i / columns]] = 1.0f; };
    // An unconditional model cannot be asked for a digit: every row gets its own noise instead.
    out.noise_of = [columns, conditional = arch.conditional](std::size_t i) { return conditional ? i % columns : i; };
    return out;
  }
  out.columns = std::size_t(q.steps);
  out.n = 4 * out.columns;
  const std::size_t columns = out.columns, a = std::size_t(q.interpolate[0]), b = std::size_t(q.interpolate[1]);
  out.labels_of = [columns, a, b](std::size_t i, float* w) {
    const float t = float(i % columns) / float(columns - 1);
    w[a] += 1.0f - t;
    w[b] += t;
  };
  out.noise_of = [columns](std::size_t i) { return i / columns; };
  return out;
}

Request parse(int argc, char** argv, bool& help) {
  po::options_description desc(
      "vae_sample: digits from a vae_dist checkpoint\n\nUsage: vae_sample --checkpoint FILE [--grid | --digits 3,7 | --interpolate 3,8 | --traverse 0,1,2 [--digits D]] "
      "[--out FILE.png] [--h5 FILE.h5]\n");
  desc.add_options()("help,h", "print this help and exit")("checkpoint", po::value<std::string>(), "checkpoint file (ckpt-eNNNN.h5)")(
      "out", po::value<std::string>(), "PNG to write (samples.png when --h5 is not given either)")(
      "h5", po::value<std::string>(), "HDF5 file to write: /samples/images [n × 28 × 28], /samples/labels, /samples/grid")(
      "grid", po::bool_switch(), "a classes × 10 grid: row d is digit d, column c the same latent noise")(
      "digits", po::value<std::string>()->default_value(""), "digits to draw, one row each, e.g. 3,7")(
      "count", po::value<int>()->default_value(10), "samples per digit (any number with --h5 alone; a PNG shows at most 10,000 samples)")(
      "interpolate", po::value<std::string>()->default_value(""), "two digits A,B: the label goes from A to B across the columns")(
      "traverse", po::value<std::string>()->default_value(""),
      "latent dimensions D1,D2,…: row r sweeps dimension Dr over -3…3 with the others fixed at one draw (a conditional model's label: --digits D)")(
      "steps", po::value<int>()->default_value(10), "columns of an interpolation or a traversal")(
      "temperature", po::value<double>()->default_value(1.0), "scale of the latent noise (1: the prior)")(
      "weights", po::value<std::string>()->default_value("raw"),
      "raw (the parameters as trained) or ema (the moving average a run with --ema-decay keeps)")(
      "precision", po::value<std::string>()->default_value("fp32"), "decoder arithmetic: fp32, or int8 (quantized at load, docs/kernels.md)")(
      "seed", po::value<std::uint64_t>()->default_value(1), "latent noise seed: the same seed gives the same images");
  const auto parsed = vae::parse_tool_request(desc, argc, argv, {"checkpoint"});
  Request q;
  help = !parsed;
  if (help) return q;
  const po::variables_map& vm = *parsed;
  q.checkpoint = vm["checkpoint"].as<std::string>();
  if (vm.count("out")) q.png = vm["out"].as<std::string>();
  if (vm.count("h5")) q.h5 = vm["h5"].as<std::string>();
  if (q.png.empty() && q.h5.empty()) q.png = "samples.png";
  q.grid = vm["grid"].as<bool>();
  q.count = vm["count"].as<int>();
  q.steps = vm["steps"].as<int>();
  q.seed = vm["seed"].as<std::uint64_t>();
  q.temperature = vm["temperature"].as<double>();
  q.weights = vm["weights"].as<std::string>();
  const std::string precision = vm["precision"].as<std::string>();
  if (precision != "fp32" && precision != "int8")
    throw vae::UsageError("option --precision: unknown value " + vae::in_quotes(precision) + " (expected fp32 or int8)");
  q.int8 = precision == "int8";
  const std::string digits = vm["digits"].as<std::string>(), interp = vm["interpolate"].as<std::string>(), traverse = vm["traverse"].as<std::string>();
  if (!digits.empty()) q.digits = vae::parse_int_list(digits, "digits");
  if (!interp.empty()) q.interpolate = vae::parse_int_list(interp, "interpolate");
  if (!traverse.empty()) q.traverse = vae::parse_int_list(traverse, "traverse");
  if (!q.traverse.empty() && q.digits.size() > 1)
    throw vae::UsageError("option --digits: a traversal draws one digit, got " + std::to_string(q.digits.size()));
  const bool digits_alone = !q.digits.empty() && q.traverse.empty();
  const int modes = int(q.grid) + int(digits_alone) + int(!q.interpolate.empty()) + int(!q.traverse.empty());
  if (modes != 1) throw vae::UsageError("give exactly one of --grid, --digits, --interpolate or --traverse");
  if (q.traverse.size() > 1000) throw vae::UsageError("option --traverse: at most 1000 dimensions");
  for (int d : q.traverse)
    if (d < 0) throw vae::UsageError("option --traverse: " + std::to_string(d) + " is not a latent dimension");
  for (int d : q.digits)
    if (d < 0 || d >= vae::kNumClasses) throw vae::UsageError("option --digits: " + std::to_string(d) + " is not a digit");
  if (!q.interpolate.empty() && (q.interpolate.size() != 2 || q.interpolate[0] < 0 || q.interpolate[0] > 9 || q.interpolate[1] < 0 ||
                                 q.interpolate[1] > 9))
    throw vae::UsageError("option --interpolate: expected two digits A,B");
  if (q.count < 1 || q.count > 100'000'000) throw vae::UsageError("option --count: must be in 1-100000000");
  if (q.steps < 2 || q.steps > 100) throw vae::UsageError("option --steps: must be in 2-100");
  if (!(q.temperature > 0 && q.temperature <= 10)) throw vae::UsageError("option --temperature: must be in (0, 10]");
  return q;
}

}  // namespace

int main(int argc, char** argv) {
  return vae::run_tool("vae_sample", [&] {
    bool help = false;
    const Request q = parse(argc, argv, help);
    if (help) return 0;
    vae::Checkpoint c = vae::read_checkpoint_guarded(q.checkpoint);
    vae::select_weights(c, q.weights, q.checkpoint);
    if (!c.arch.conditional && (!q.interpolate.empty() || !q.digits.empty()))
      throw vae::UsageError(q.checkpoint + ": the model is unconditional, so it cannot be asked for digits (use --grid or --traverse alone)");
    if (c.arch.conditional && !q.traverse.empty() && q.digits.empty())
      throw vae::UsageError("option --traverse: " + q.checkpoint + " is a conditional model; name the digit to draw with --digits D");
    for (int d : q.traverse)
      if (d >= c.arch.latent)
        throw vae::UsageError("option --traverse: " + std::to_string(d) + " is not among the model's " + std::to_string(c.arch.latent) + " latent dimensions");
    const int classes = c.arch.classes;
    for (int d : q.digits)
      if (d >= classes) throw vae::UsageError("option --digits: " + std::to_string(d) + " is not among the model's " + std::to_string(classes) + " classes");
    for (int d : q.interpolate)
      if (d >= classes)
        throw vae::UsageError("option --interpolate: " + std::to_string(d) + " is not among the model's " + std::to_string(classes) + " classes");
    const Layout rows = layout_for(q, c.arch);
    // A picture of every sample is only drawn while it stays a picture; beyond that the samples go to HDF5 alone.
    const bool tiled = rows.n <= kMaxTiled;
    if (!tiled && !q.png.empty())
      throw vae::UsageError("option --count: a PNG shows at most " + std::to_string(kMaxTiled) + " samples, asked for " + std::to_string(rows.n) +
                            "; write them to HDF5 with --h5 FILE alone");

    const vae::ParamLayout layout(c.arch);
    const auto kernels = vae::make_kernels(vae::KernelChoice::parallel, 1);
    std::unique_ptr<vae::Decoder> decoder;
    if (q.int8) decoder = std::make_unique<vae::Int8Decoder>(c.arch, layout, c.params.data(), *kernels, vae::kSampleBatch);
    else decoder = std::make_unique<vae::Fp32Decoder>(c.arch, layout, c.params.data(), *kernels, vae::kSampleBatch);
    const std::size_t C = std::size_t(classes), P = std::size_t(vae::kImagePixels);
    const std::uint64_t key = vae::stream_key(q.seed, vae::Stream::samples, 1);
    // Samples first … first + count − 1, made kSampleBatch at a time so memory stays bounded for any count.
    const vae::SampleSource generate = [&](std::size_t first, std::size_t count, std::uint8_t* images, float* labels) {
      std::vector<std::size_t> noise(count);
      std::fill_n(labels, count * C, 0.0f);
      for (std::size_t i = 0; i < count; ++i) {
        rows.labels_of(first + i, labels + i * C);
        noise[i] = rows.noise_of(first + i);
      }
      std::vector<float> inputs = vae::decoder_inputs(c.arch, *kernels, {labels, count * C}, noise, q.temperature, key);
      if (rows.latent_of)
        for (std::size_t i = 0; i < count; ++i) rows.latent_of(first + i, inputs.data() + i * c.arch.dec_in());
      vae::decode_to_pixels(*decoder, inputs, count, images);
    };

    std::vector<std::uint8_t> images, grid;
    std::vector<float> labels;
    std::size_t width = 0, height = 0;
    if (tiled) {
      images.resize(rows.n * P);
      labels.resize(rows.n * C);
      for (std::size_t first = 0; first < rows.n; first += vae::kSampleBatch) {
        const std::size_t count = std::min(vae::kSampleBatch, rows.n - first);
        generate(first, count, images.data() + first * P, labels.data() + first * C);
      }
      grid = vae::tile_images(images.data(), rows.n, rows.columns);
      width = rows.columns * vae::kImageSide;
      height = grid.size() / width;
    }
    if (!q.png.empty()) {
      vae::write_png_gray(q.png, width, height, grid.data());
      std::printf("wrote %zu samples to %s\n", rows.n, q.png.c_str());
    }
    if (!q.h5.empty()) {
      const char* kind = q.grid ? "grid" : !q.traverse.empty() ? "traverse" : q.digits.empty() ? "interpolate" : "digits";
      const vae::SampleSource from_memory = [&](std::size_t first, std::size_t count, std::uint8_t* out, float* out_labels) {
        std::copy_n(images.data() + first * P, count * P, out);
        std::copy_n(labels.data() + first * C, count * C, out_labels);
      };
      vae::write_sample_file(q.h5, {q.checkpoint, kind, q.seed, q.temperature, rows.n, C, grid, width, height}, tiled ? from_memory : generate);
      std::printf("wrote %zu samples to %s\n", rows.n, q.h5.c_str());
    }
    return 0;
  });
}
