// vae_dist: the training executable; turns every failure into a one-line message and a non-zero exit on every rank.
#include <csignal>
#include <cstdio>
#include <exception>
#include <memory>

#include "vae/communicator.hpp"
#include "vae/config.hpp"
#include "vae/errors.hpp"
#include "vae/trainer.hpp"

namespace {

extern "C" void on_stop_signal(int) { vae::Trainer::request_stop(); }

}  // namespace

int main(int argc, char** argv) {
  vae::MpiSession mpi(argc, argv);
  // Batch systems warn of the end with SIGTERM or SIGUSR1/2 (mpirun forwards USR1/USR2 to every rank): checkpoint, exit 4.
  for (int sig : {SIGTERM, SIGUSR1, SIGUSR2}) std::signal(sig, on_stop_signal);
  const vae::Communicator comm = vae::Communicator::world();
  try {
    // Options and data are checked on every rank, then agreed on, so a usage error exits 2 everywhere and never hangs.
    std::string error;
    vae::ParsedArgs args;
    try {
      args = vae::parse_args(argc, argv);
    } catch (const vae::UsageError& e) {
      error = e.what();
    }
    if (comm.any_failed(error, "vae_dist")) return vae::kExitUsage;
    args.config.progress = vae::resolve_progress(args.config.progress, mpi.launched());
    if (args.help) {
      if (comm.rank() == 0) std::fputs(args.help_text.c_str(), stdout);
      return 0;
    }
    // One rank per node decompresses .gz data into its cache; the agreement that follows is the others' cue to map it.
    if (comm.local_rank() == 0) {
      try {
        vae::Trainer::prepare_data(args.config);
      } catch (const vae::UsageError& e) {
        error = e.what();
      }
    }
    if (comm.any_failed(error, "vae_dist")) return vae::kExitUsage;
    const int threads = args.config.threads > 0 ? args.config.threads : vae::default_threads(comm);
    if (const std::string warning = vae::oversubscription_warning(comm, threads); !warning.empty())
      std::fprintf(stderr, "vae_dist: warning: %s\n", warning.c_str());
    std::unique_ptr<vae::Trainer> trainer;
    try {
      trainer = std::make_unique<vae::Trainer>(args.config, comm, threads);
    } catch (const vae::UsageError& e) {
      error = e.what();
    }
    if (comm.any_failed(error, "vae_dist")) return vae::kExitUsage;
    trainer->run();
  } catch (const vae::AgreedError& e) {
    if (comm.rank() == 0) std::fprintf(stderr, "vae_dist: error: %s\n", e.what());
    return e.code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vae_dist: rank %d: error: %s\n", comm.rank(), e.what());
    comm.abort(vae::kExitFailure);
  }
  return 0;
}
