// vae_export: writes a checkpoint's decoder as a web decoder file for the browser page, and optionally reference outputs to check a port against.
#include <boost/program_options.hpp>

#include <cstdio>
#include <exception>

#include "vae/checkpoint.hpp"
#include "vae/config.hpp"
#include "vae/errors.hpp"
#include "vae/tool_options.hpp"
#include "vae/file_io.hpp"
#include "vae/json.hpp"
#include "vae/kernels.hpp"
#include "vae/model.hpp"
#include "vae/rng.hpp"
#include "vae/version.hpp"
#include "vae/web_decoder.hpp"

namespace po = boost::program_options;

namespace {

struct Request {
  std::string checkpoint, out, reference;
  int reference_count = 100;
  std::uint64_t seed = 1;
};

Request parse(int argc, char** argv, bool& help) {
  po::options_description desc(
      "vae_export: a checkpoint's decoder as a web decoder file (docs/portability.md)\n\nUsage: vae_export --checkpoint FILE --out FILE.vaed "
      "[--reference FILE.json [--reference-count N] [--seed S]]\n");
  desc.add_options()("help,h", "print this help and exit")("checkpoint", po::value<std::string>(), "checkpoint file (ckpt-eNNNN.h5)")(
      "out", po::value<std::string>(), "web decoder file to write (e.g. web/model.vaed)")(
      "reference", po::value<std::string>(), "also write this JSON: decoder inputs and the native decoder's pixel probabilities for them")(
      "reference-count", po::value<int>()->default_value(100), "rows of the reference: digit i mod classes, latent noise row i")(
      "seed", po::value<std::uint64_t>()->default_value(1), "latent noise seed of the reference");
  const auto parsed = vae::parse_tool_request(desc, argc, argv, {"checkpoint", "out"});
  Request q;
  help = !parsed;
  if (help) return q;
  const po::variables_map& vm = *parsed;
  q.checkpoint = vm["checkpoint"].as<std::string>();
  q.out = vm["out"].as<std::string>();
  if (vm.count("reference")) q.reference = vm["reference"].as<std::string>();
  q.reference_count = vm["reference-count"].as<int>();
  q.seed = vm["seed"].as<std::uint64_t>();
  if (q.reference_count < 1 || q.reference_count > 10'000) throw vae::UsageError("option --reference-count: must be in 1-10000");
  return q;
}

// Rows of digit i mod classes (any digit for an unconditional model) with noise row i, through the native decoder.
void write_reference(const Request& q, const vae::Checkpoint& c, const vae::ParamLayout& layout) {
  const std::size_t n = std::size_t(q.reference_count), classes = std::size_t(c.arch.classes), dec_in = c.arch.dec_in();
  const auto kernels = vae::make_parallel_kernels(1);
  std::vector<float> weights(n * classes, 0.0f);
  std::vector<std::size_t> noise(n);
  for (std::size_t i = 0; i < n; ++i) {
    weights[i * classes + i % classes] = 1.0f;
    noise[i] = i;
  }
  const std::uint64_t key = vae::stream_key(q.seed, vae::Stream::samples, 1);
  const std::vector<float> inputs = vae::decoder_inputs(c.arch, *kernels, weights, noise, 1.0, key);
  vae::InferenceNetwork inference(c.arch, layout, *kernels, n);
  std::copy(inputs.begin(), inputs.end(), inference.net().decoder_input().begin());
  inference.net().decode(*kernels, c.params.data(), n);
  std::vector<float> probabilities(n * vae::kImagePixels);
  const std::span<const float> logits = inference.net().logits();
  for (std::size_t i = 0; i < probabilities.size(); ++i) probabilities[i] = vae::pixel_probability(logits[i]);

  vae::JsonObject reference;
  reference.text("kernels", kernels->name()).number("rows", double(n)).number("dec_in", double(dec_in)).number("pixels", vae::kImagePixels);
  reference.numbers("inputs", inputs.data(), inputs.size()).numbers("probabilities", probabilities.data(), probabilities.size());
  const std::string text = reference.str() + "\n";
  vae::write_file_atomically(q.reference, {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
}

}  // namespace

int main(int argc, char** argv) {
  return vae::run_tool("vae_export", [&] {
    bool help = false;
    const Request q = parse(argc, argv, help);
    if (help) return 0;
    const vae::Checkpoint c = vae::read_checkpoint_guarded(q.checkpoint);
    const vae::ParamLayout layout(c.arch);
    vae::JsonObject about;
    about.text("checkpoint", q.checkpoint).number("epoch", c.state.epoch).raw("binarized", c.state.binarize ? "true" : "false");
    about.text("architecture", c.arch.describe()).text("vae_dist", std::string(vae::version()) + " " + vae::git_commit());
    const std::vector<std::uint8_t> file = vae::encode_web_decoder(c.arch, layout, c.params, about.str());
    vae::write_file_atomically(q.out, file);
    std::printf("wrote the decoder of %s (%s) to %s, %zu bytes\n", q.checkpoint.c_str(), c.arch.describe().c_str(), q.out.c_str(), file.size());
    if (!q.reference.empty()) {
      write_reference(q, c, layout);
      std::printf("wrote %d reference rows to %s\n", q.reference_count, q.reference.c_str());
    }
    return 0;
  });
}
