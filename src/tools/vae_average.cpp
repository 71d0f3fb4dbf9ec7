// vae_average: the mean of several checkpoints' parameters (stochastic weight averaging), written as a checkpoint that vae_eval and vae_sample read.
#include <boost/program_options.hpp>

#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "vae/checkpoint.hpp"
#include "vae/errors.hpp"
#include "vae/model.hpp"
#include "vae/tool_options.hpp"

namespace po = boost::program_options;

int main(int argc, char** argv) {
  return vae::run_tool("vae_average", [&] {
    po::options_description desc(
        "vae_average: the mean of checkpoints' parameters, in a copy of the last one (docs/quality.md, \"Averaging weights\")\n\n"
        "Usage: vae_average --checkpoint A.h5 B.h5 [C.h5 ...] --out FILE.h5\n");
    desc.add_options()("help,h", "print this help and exit")(
        "checkpoint", po::value<std::vector<std::string>>()->multitoken(), "checkpoints of one run (or one architecture), two or more")(
        "out", po::value<std::string>(), "checkpoint file to write");
    const auto parsed = vae::parse_tool_request(desc, argc, argv, {"checkpoint", "out"});
    if (!parsed) return 0;
    const std::vector<std::string> names = (*parsed)["checkpoint"].as<std::vector<std::string>>();
    const std::string out = (*parsed)["out"].as<std::string>();
    if (names.size() < 2) throw vae::UsageError("option --checkpoint: give two checkpoints or more to average");
    vae::CheckpointAverage average;
    for (const std::string& name : names) average.add(vae::read_checkpoint_guarded(name), name);
    const vae::Checkpoint mean = std::move(average).mean();
    const vae::ParamLayout layout(mean.arch);
    vae::write_checkpoint(out, mean.arch, layout, mean.params, mean.adam_m, mean.adam_v, mean.state, {mean.metrics, {}, 0, 0, mean.ema});
    std::printf("wrote the mean of %zu checkpoints' parameters (%s) to %s\n", names.size(), mean.arch.describe().c_str(), out.c_str());
    return 0;
  });
}
