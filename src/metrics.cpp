// Formatting of epoch records for people (console) and machines (JSON lines).
#include "vae/metrics.hpp"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "vae/errors.hpp"

namespace vae {
namespace {

std::string fmt(const char* f, auto... args) {
  char buf[512];
  std::snprintf(buf, sizeof buf, f, args...);
  return buf;
}

}  // namespace

std::string format_console(const EpochRecord& r, int total_epochs) {
  std::string s = fmt("epoch %3d/%-3d %-8s beta %.3f lr %.2e | train %.2f (rec %.2f kl %.2f) | test -elbo %.2f", r.epoch,
                      total_epochs, mode_name(r.mode).c_str(), r.beta, r.lr, r.train_recon + r.beta * r.train_kl, r.train_recon,
                      r.train_kl, r.test_elbo);
  if (r.val_elbo >= 0) s += fmt(" | val -elbo %.2f", r.val_elbo);
  s += fmt(" | %.0f samples/s | %.1fs", r.samples_per_s, r.elapsed_seconds);
  return s;
}

std::string format_json(const EpochRecord& r) {
  std::string s = fmt(
      "{\"epoch\":%d,\"step\":%ld,\"mode\":\"%s\",\"beta\":%.9g,\"lr\":%.9g,\"train_loss\":%.9g,\"train_recon\":%.9g,\"train_kl\":%.9g,"
      "\"test_elbo\":%.9g,\"test_recon\":%.9g,\"test_kl\":%.9g",
      r.epoch, r.step, mode_name(r.mode).c_str(), r.beta, r.lr, r.train_recon + r.beta * r.train_kl, r.train_recon, r.train_kl,
      r.test_elbo, r.test_recon, r.test_kl);
  if (r.val_elbo >= 0) s += fmt(",\"val_elbo\":%.9g", r.val_elbo);
  s += fmt(",\"samples_per_s\":%.6g,\"epoch_seconds\":%.6g,\"elapsed_seconds\":%.6g,\"peak_rss_bytes\":%.0f,\"skipped_steps\":%ld",
           r.samples_per_s, r.epoch_seconds, r.elapsed_seconds, r.peak_rss_bytes, r.skipped_steps);
  const PhaseTimes& t = r.time;
  s += fmt(",\"time_data\":%.6g,\"time_forward\":%.6g,\"time_backward\":%.6g,\"time_allreduce_wait\":%.6g,\"time_update\":%.6g,"
           "\"time_checkpoint\":%.6g}",
           t.data, t.forward, t.backward, t.allreduce, t.update, t.checkpoint);
  return s;
}

std::string format_profile(const PhaseTimes& t, long steps, int global_batch) {
  const double total = t.total();
  auto row = [&](const char* name, double seconds) {
    return fmt("  %-16s %9.3f s %7.1f%% %9.3f ms/step\n", name, seconds, total > 0 ? 100.0 * seconds / total : 0.0,
               steps ? 1e3 * seconds / double(steps) : 0.0);
  };
  std::string s = fmt("profile: %ld steps of %d samples, phases averaged over ranks\n", steps, global_batch);
  s += row("data", t.data);
  s += row("forward + loss", t.forward);
  s += row("backward", t.backward);
  s += row("allreduce wait", t.allreduce);
  s += row("update", t.update);
  s += row("checkpoint", t.checkpoint);
  s += row("total", total);
  return s;
}

LineFile::LineFile(const std::string& path, bool append) : path_(path) {
  f_ = std::fopen(path.c_str(), append ? "a" : "w");
  if (!f_) throw UsageError(path + ": cannot open for writing: " + std::strerror(errno));
}

LineFile::~LineFile() {
  if (f_) std::fclose(f_);
}

void LineFile::write(const std::string& line) {
  if (std::fputs(line.c_str(), f_) < 0 || std::fputc('\n', f_) == EOF || std::fflush(f_) != 0)
    throw std::runtime_error(path_ + ": write failed: " + std::strerror(errno));
}

}  // namespace vae
