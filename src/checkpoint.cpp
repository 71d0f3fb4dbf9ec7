// HDF5 checkpoint writing and defensive reading; every HDF5 return code is checked and turned into an error naming the file.
#include "vae/checkpoint.hpp"
#include "vae/classifier.hpp"

#include <fcntl.h>
#include <hdf5.h>
#include <hdf5_hl.h>
#include <H5PLpublic.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <optional>
#include <stdexcept>
#include <type_traits>

#include "vae/errors.hpp"
#include "vae/version.hpp"

namespace vae {
namespace {

// An HDF5 identifier closed by its own close function when it goes out of scope.
class H5Id {
 public:
  H5Id(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  ~H5Id() {
    if (id_ >= 0) close_(id_);
  }
  operator hid_t() const { return id_; }
  bool valid() const { return id_ >= 0; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

// Errors while writing are the system's (disk full, permissions): runtime_error. Errors while reading are the file's:
// UsageError, exit 2.
struct Where {
  std::string path;
  bool reading;
  [[noreturn]] void fail(const std::string& problem) const {
    if (reading) throw UsageError(path + ": " + problem);
    throw std::runtime_error(path + ": " + problem);
  }
  hid_t id(hid_t handle, const std::string& what) const {
    if (handle < 0) fail(what);
    return handle;
  }
  void check(herr_t rc, const char* what) const {
    if (rc < 0) fail(what);
  }
};

void set_attr(const Where& w, hid_t obj, const char* name, hid_t type, const void* value, hsize_t count = 1) {
  H5Id space(w.id(H5Screate_simple(1, &count, nullptr), std::string("cannot describe attribute ") + name), H5Sclose);
  H5Id attr(w.id(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT), std::string("cannot create attribute ") + name), H5Aclose);
  w.check(H5Awrite(attr, type, value), "cannot write an attribute");
}

void set_attr(const Where& w, hid_t obj, const char* name, long long v) { set_attr(w, obj, name, H5T_NATIVE_LLONG, &v); }
void set_attr(const Where& w, hid_t obj, const char* name, double v) { set_attr(w, obj, name, H5T_NATIVE_DOUBLE, &v); }
void set_attr(const Where& w, hid_t obj, const char* name, const std::string& v) {
  w.check(H5LTset_attribute_string(obj, ".", name, v.c_str()), "cannot write a string attribute");
}

template <class T>
T get_attr(const Where& w, hid_t obj, const char* name, hid_t type) {
  if (H5Aexists(obj, name) <= 0) w.fail(std::string("missing attribute ") + name);
  H5Id attr(w.id(H5Aopen(obj, name, H5P_DEFAULT), std::string("cannot open attribute ") + name), H5Aclose);
  H5Id space(H5Aget_space(attr), H5Sclose);
  if (H5Sget_simple_extent_npoints(space) != 1) w.fail(std::string("attribute ") + name + " is not a single value");
  T v{};
  w.check(H5Aread(attr, type, &v), "cannot read an attribute");
  return v;
}
long long get_int(const Where& w, hid_t obj, const char* name) { return get_attr<long long>(w, obj, name, H5T_NATIVE_LLONG); }
double get_double(const Where& w, hid_t obj, const char* name) { return get_attr<double>(w, obj, name, H5T_NATIVE_DOUBLE); }
// A list of layer widths (attribute model/<name>): 1 to 64 values, each in 1-65536.
std::vector<int> read_widths(const Where& w, hid_t model, const char* name) {
  const std::string where = std::string("attribute model/") + name;
  H5Id attr(w.id(H5Aopen(model, name, H5P_DEFAULT), "cannot open " + where), H5Aclose);
  H5Id space(H5Aget_space(attr), H5Sclose);
  const hssize_t n = H5Sget_simple_extent_npoints(space);
  if (n <= 0 || n > 64) w.fail(where + " has " + std::to_string(n) + " values");
  std::vector<long long> values(static_cast<std::size_t>(n));
  w.check(H5Aread(attr, H5T_NATIVE_LLONG, values.data()), ("cannot read " + where).c_str());
  std::vector<int> widths;
  for (long long v : values) {
    if (v <= 0 || v > 65536) w.fail(where + " holds an impossible width " + std::to_string(v));
    widths.push_back(int(v));
  }
  return widths;
}

std::string get_string(const Where& w, hid_t obj, const char* name) {
  if (H5Aexists(obj, name) <= 0) w.fail(std::string("missing attribute ") + name);
  hsize_t dims = 0;
  H5T_class_t cls{};
  std::size_t size = 0;
  w.check(H5LTget_attribute_info(obj, ".", name, &dims, &cls, &size), "cannot inspect a string attribute");
  if (cls != H5T_STRING) w.fail(std::string("attribute ") + name + " is not a string");
  std::string s(size, '\0');
  w.check(H5LTget_attribute_string(obj, ".", name, s.data()), "cannot read a string attribute");
  s.resize(std::strlen(s.c_str()));
  return s;
}

void write_floats(const Where& w, hid_t group, const char* name, const float* data, const std::vector<hsize_t>& dims) {
  H5Id space(w.id(H5Screate_simple(int(dims.size()), dims.data(), nullptr), "cannot describe a dataset"), H5Sclose);
  H5Id set(w.id(H5Dcreate2(group, name, H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                   std::string("cannot create dataset ") + name),
           H5Dclose);
  w.check(H5Dwrite(set, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), "cannot write a dataset (is the disk full?)");
}

// A dataset of exactly the shape `want` into out (float32 or uint8), or an error naming it; floats must all be finite.
template <class T>
void read_array(const Where& w, hid_t group, const std::string& where, const char* name, T* out, const std::vector<hsize_t>& want) {
  const std::string full = where + "/" + name;
  if (H5Lexists(group, name, H5P_DEFAULT) <= 0) w.fail("missing dataset " + full);
  H5Id set(w.id(H5Dopen2(group, name, H5P_DEFAULT), "cannot open dataset " + full), H5Dclose);
  H5Id space(H5Dget_space(set), H5Sclose);
  std::vector<hsize_t> got(want.size() + 1);
  const int rank = H5Sget_simple_extent_ndims(space);
  if (rank != int(want.size())) w.fail("dataset " + full + " has rank " + std::to_string(rank) + ", expected " + std::to_string(want.size()));
  H5Sget_simple_extent_dims(space, got.data(), nullptr);
  for (std::size_t i = 0; i < want.size(); ++i)
    if (got[i] != want[i]) {
      std::string g, e;
      for (std::size_t j = 0; j < want.size(); ++j) {
        g += (j ? "x" : "") + std::to_string(got[j]);
        e += (j ? "x" : "") + std::to_string(want[j]);
      }
      w.fail("dataset " + full + " is " + g + ", expected " + e);
    }
  const hid_t type = std::is_same_v<T, float> ? H5T_NATIVE_FLOAT : H5T_NATIVE_UINT8;
  w.check(H5Dread(set, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out), ("cannot read dataset " + full).c_str());
  if constexpr (std::is_same_v<T, float>) {
    std::size_t n = 1;
    for (hsize_t d : want) n *= std::size_t(d);
    for (std::size_t i = 0; i < n; ++i)
      if (!std::isfinite(out[i])) w.fail("dataset " + full + " holds a non-finite value at element " + std::to_string(i));
  }
}

// One group per layer under `root`, each with a weight (a dense layer's [in × out], a convolution's [W0 × W1 × k × k] as
// PyTorch keeps it) and a bias [out], from a flat buffer.
std::vector<hsize_t> dims_of(const std::vector<std::size_t>& dims) { return {dims.begin(), dims.end()}; }

void write_layers(const Where& w, hid_t file, const char* root, const ParamLayout& layout, std::span<const float> flat) {
  H5Id top(w.id(H5Gcreate2(file, root, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), std::string("cannot create group ") + root), H5Gclose);
  for (const LayerSpec& s : layout.layers()) {
    H5Id g(w.id(H5Gcreate2(top, s.name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), "cannot create group " + s.name), H5Gclose);
    write_floats(w, g, "weight", flat.data() + s.w_offset, dims_of(s.weight_dims()));
    write_floats(w, g, "bias", flat.data() + s.b_offset, {s.bias_count()});
  }
}

void read_layers(const Where& w, hid_t file, const std::string& root, const ParamLayout& layout, std::vector<float>& flat) {
  flat.assign(layout.padded_size(), 0.0f);
  if (H5Lexists(file, root.c_str(), H5P_DEFAULT) <= 0) w.fail("missing group " + root);
  H5Id top(w.id(H5Gopen2(file, root.c_str(), H5P_DEFAULT), "cannot open group " + root), H5Gclose);
  for (const LayerSpec& s : layout.layers()) {
    if (H5Lexists(top, s.name.c_str(), H5P_DEFAULT) <= 0) w.fail("missing group " + root + "/" + s.name);
    H5Id g(w.id(H5Gopen2(top, s.name.c_str(), H5P_DEFAULT), "cannot open group " + root + "/" + s.name), H5Gclose);
    read_array(w, g, root + "/" + s.name, "weight", flat.data() + s.w_offset, dims_of(s.weight_dims()));
    read_array(w, g, root + "/" + s.name, "bias", flat.data() + s.b_offset, {s.bias_count()});
  }
}

std::string now_iso8601() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

void fsync_path(const std::filesystem::path& p, const Where& w) {
  const int fd = ::open(p.c_str(), O_RDONLY);
  if (fd < 0) w.fail(std::string("cannot reopen to flush: ") + std::strerror(errno));
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) w.fail(std::string("cannot flush to disk: ") + std::strerror(errno));
}

// An HDF5 image (CLASS=IMAGE with a grey palette): HDFView shows it and h52gif converts it.
void write_grey_image(const Where& w, hid_t group, const char* name, const std::uint8_t* pixels, hsize_t width, hsize_t height) {
  w.check(H5IMmake_image_8bit(group, name, width, height, pixels), "cannot write the image");
  std::vector<std::uint8_t> grey(256 * 3);
  for (std::size_t i = 0; i < 256; ++i) grey[3 * i] = grey[3 * i + 1] = grey[3 * i + 2] = std::uint8_t(i);
  const hsize_t pal_dims[2] = {256, 3};
  w.check(H5IMmake_palette(group, "grey", pal_dims, grey.data()), "cannot write the palette");
  w.check(H5IMlink_palette(group, name, "grey"), "cannot attach the palette");
}

// Writes path atomically: fill() writes a temporary file beside it, which is flushed to disk and renamed over path, and the
// directory flushed. A failure removes the temporary file and leaves path untouched.
template <class Fill>
void write_atomically(const std::filesystem::path& path, Fill&& fill) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // our messages, not HDF5's stack dumps
  const std::filesystem::path tmp = path.string() + ".tmp." + std::to_string(::getpid());
  const Where w{tmp.string(), false};
  try {
    {
      H5Id file(w.id(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), "cannot create (is the directory writable?)"),
                H5Fclose);
      fill(w, hid_t(file));
      w.check(H5Fflush(file, H5F_SCOPE_GLOBAL), "cannot flush (is the disk full?)");
    }
    fsync_path(tmp, w);
    if (std::rename(tmp.c_str(), path.c_str()) != 0) w.fail("cannot rename into " + path.string() + ": " + std::strerror(errno));
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw;
  }
  fsync_path(path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path(), w);
}

}  // namespace

// The metrics table: one float64 dataset per field, one row per epoch (mode as 0 FAST, 1 BALANCED, 2 QUALITY).
struct MetricField {
  const char* name;
  double (*get)(const EpochRecord&);
  void (*set)(EpochRecord&, double);
};
#define VAE_FIELD(name, expr_get, stmt_set) \
  MetricField { name, [](const EpochRecord& r) { return double(expr_get); }, [](EpochRecord& r, double x) { stmt_set; } }
const MetricField kMetricFields[] = {
    VAE_FIELD("epoch", r.epoch, r.epoch = int(x)),
    VAE_FIELD("step", r.step, r.step = long(x)),
    VAE_FIELD("mode", int(r.mode), r.mode = Mode(int(x))),
    VAE_FIELD("beta", r.beta, r.beta = x),
    VAE_FIELD("lr", r.lr, r.lr = x),
    VAE_FIELD("train_recon", r.train_recon, r.train_recon = x),
    VAE_FIELD("train_kl", r.train_kl, r.train_kl = x),
    VAE_FIELD("test_elbo", r.test_elbo, r.test_elbo = x),
    VAE_FIELD("test_recon", r.test_recon, r.test_recon = x),
    VAE_FIELD("test_kl", r.test_kl, r.test_kl = x),
    VAE_FIELD("val_elbo", r.val_elbo, r.val_elbo = x),
    VAE_FIELD("samples_per_s", r.samples_per_s, r.samples_per_s = x),
    VAE_FIELD("epoch_seconds", r.epoch_seconds, r.epoch_seconds = x),
    VAE_FIELD("elapsed_seconds", r.elapsed_seconds, r.elapsed_seconds = x),
    VAE_FIELD("peak_rss_bytes", r.peak_rss_bytes, r.peak_rss_bytes = x),
    VAE_FIELD("skipped_steps", r.skipped_steps, r.skipped_steps = long(x)),
    VAE_FIELD("time_data", r.time.data, r.time.data = x),
    VAE_FIELD("time_forward", r.time.forward, r.time.forward = x),
    VAE_FIELD("time_backward", r.time.backward, r.time.backward = x),
    VAE_FIELD("time_allreduce_wait", r.time.allreduce, r.time.allreduce = x),
    VAE_FIELD("time_update", r.time.update, r.time.update = x),
    VAE_FIELD("time_checkpoint", r.time.checkpoint, r.time.checkpoint = x),
};
#undef VAE_FIELD

void write_checkpoint(const std::filesystem::path& path, const Arch& arch, const ParamLayout& layout, std::span<const float> params,
                      std::span<const float> adam_m, std::span<const float> adam_v, const TrainingState& state,
                      const CheckpointExtras& extras) {
  write_atomically(path, [&](const Where& w, hid_t file) {
    set_attr(w, file, "format", std::string(kCheckpointFormat));
    set_attr(w, file, "format_version", (long long)kCheckpointVersion);
    set_attr(w, file, "program_version", std::string(version()));
    set_attr(w, file, "git_commit", std::string(git_commit()));
    set_attr(w, file, "created", now_iso8601());
    set_attr(w, file, "world_size", (long long)state.world_size);

    write_layers(w, file, "model", layout, params);
    {
      H5Id model(w.id(H5Gopen2(file, "model", H5P_DEFAULT), "cannot open group model"), H5Gclose);
      std::vector<long long> hidden(arch.hidden.begin(), arch.hidden.end());
      set_attr(w, model, "hidden", H5T_NATIVE_LLONG, hidden.data(), hidden.size());
      // only a convolutional model has the attribute, so an MLP's file reads as before
      std::vector<long long> conv(arch.conv_channels.begin(), arch.conv_channels.end());
      if (!conv.empty()) set_attr(w, model, "conv_channels", H5T_NATIVE_LLONG, conv.data(), conv.size());
      set_attr(w, model, "latent", (long long)arch.latent);
      set_attr(w, model, "classes", (long long)arch.classes);
      set_attr(w, model, "image", (long long)arch.image);
      set_attr(w, model, "conditional", (long long)arch.conditional);
      set_attr(w, model, "label_every_layer", (long long)arch.label_every_layer);
      set_attr(w, model, "activation", activation_name(arch.act));
    }
    H5Id opt(w.id(H5Gcreate2(file, "optimizer", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), "cannot create group optimizer"), H5Gclose);
    set_attr(w, opt, "algorithm", std::string("adam"));
    set_attr(w, opt, "step", (long long)state.updates);
    set_attr(w, opt, "lr", state.adam.lr);
    set_attr(w, opt, "beta1", state.adam.beta1);
    set_attr(w, opt, "beta2", state.adam.beta2);
    set_attr(w, opt, "eps", state.adam.eps);
    set_attr(w, opt, "weight_decay", state.adam.weight_decay);
    set_attr(w, opt, "ema_decay", state.adam.ema_decay);
    write_layers(w, file, "optimizer/m", layout, adam_m);
    write_layers(w, file, "optimizer/v", layout, adam_v);
    if (!extras.ema.empty()) write_layers(w, file, "optimizer/ema", layout, extras.ema);

    H5Id training(w.id(H5Gcreate2(file, "training", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), "cannot create group training"), H5Gclose);
    set_attr(w, training, "epoch", (long long)state.epoch);
    set_attr(w, training, "step", (long long)state.step);
    set_attr(w, training, "updates", (long long)state.updates);
    set_attr(w, training, "skipped_steps", (long long)state.skipped);
    set_attr(w, training, "seed", (long long)state.seed);
    set_attr(w, training, "binarize", std::string(state.binarize ? "dynamic" : "none"));
    set_attr(w, training, "precision", std::string(precision_name(state.precision)));
    set_attr(w, training, "mode", mode_name(state.scheduler.mode));
    set_attr(w, training, "mode_start", (long long)state.scheduler.mode_start);
    set_attr(w, training, "plateau_best", state.scheduler.best);
    set_attr(w, training, "plateau_stale_epochs", (long long)state.scheduler.stale_epochs);
    set_attr(w, training, "plateau_advance_next", (long long)state.scheduler.advance_next);

    w.check(H5LTmake_dataset_string(file, "config", state.config_ini.c_str()), "cannot write the configuration");

    H5Id metrics(w.id(H5Gcreate2(file, "metrics", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), "cannot create group metrics"), H5Gclose);
    set_attr(w, metrics, "mode_values", std::string("0 FAST, 1 BALANCED, 2 QUALITY"));
    const hsize_t rows = extras.metrics.size();
    std::vector<double> column(extras.metrics.size());
    for (const MetricField& f : kMetricFields) {
      for (std::size_t i = 0; i < column.size(); ++i) column[i] = f.get(extras.metrics[i]);
      w.check(H5LTmake_dataset_double(metrics, f.name, 1, &rows, column.data()), "cannot write the metrics table");
    }

    if (!extras.grid.empty()) {
      H5Id samples(w.id(H5Gcreate2(file, "samples", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), "cannot create group samples"), H5Gclose);
      write_grey_image(w, samples, "grid", extras.grid.data(), extras.grid_width, extras.grid_height);
      set_attr(w, samples, "layout", std::string("row d: ten samples of digit d; column c: the same latent noise z_c in every row"));
    }
  });
}

void write_sample_file(const std::filesystem::path& path, const SampleSet& set, const SampleSource& source) {
  write_atomically(path, [&](const Where& w, hid_t file) {
    set_attr(w, file, "format", std::string("vae_dist-samples"));
    set_attr(w, file, "program_version", std::string(version()));
    set_attr(w, file, "created", now_iso8601());
    set_attr(w, file, "checkpoint", set.checkpoint);
    set_attr(w, file, "kind", set.kind);
    set_attr(w, file, "seed", (long long)set.seed);
    set_attr(w, file, "temperature", set.temperature);
    H5Id samples(w.id(H5Gcreate2(file, "samples", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), "cannot create group samples"), H5Gclose);
    const hsize_t n = set.count, side = hsize_t(kImageSide), classes = std::max<hsize_t>(set.classes, 1);
    const hsize_t batch = std::min<hsize_t>(n, kSampleBatch);
    // Generated digits are mostly black: deflate shrinks them several-fold for little time (unlike the float arrays).
    // Chunks of one batch let each batch be written as it is made.
    const auto create = [&](const char* name, hid_t type, std::vector<hsize_t> dims) {
      std::vector<hsize_t> chunk = dims;
      chunk[0] = batch;
      H5Id dcpl(w.id(H5Pcreate(H5P_DATASET_CREATE), "cannot create a property list"), H5Pclose);
      w.check(H5Pset_chunk(dcpl, int(chunk.size()), chunk.data()), "cannot set the chunk size");
      w.check(H5Pset_deflate(dcpl, 6), "cannot enable deflate");
      H5Id space(w.id(H5Screate_simple(int(dims.size()), dims.data(), nullptr), "cannot describe a dataset"), H5Sclose);
      return H5Id(w.id(H5Dcreate2(samples, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT), "cannot create a dataset"), H5Dclose);
    };
    H5Id images = create("images", H5T_STD_U8LE, {n, side, side});
    H5Id labels = create("labels", H5T_IEEE_F32LE, {n, classes});
    const auto write_rows = [&](hid_t set_id, hid_t memtype, std::vector<hsize_t> dims, hsize_t first, hsize_t rows, const void* data) {
      H5Id file_space(w.id(H5Dget_space(set_id), "cannot read a dataset's shape"), H5Sclose);
      std::vector<hsize_t> start(dims.size(), 0), count = dims;
      start[0] = first;
      count[0] = rows;
      w.check(H5Sselect_hyperslab(file_space, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr), "cannot select rows");
      H5Id mem_space(w.id(H5Screate_simple(int(count.size()), count.data(), nullptr), "cannot describe a batch"), H5Sclose);
      w.check(H5Dwrite(set_id, memtype, mem_space, file_space, H5P_DEFAULT, data), "cannot write a batch of samples (is the disk full?)");
    };
    std::vector<std::uint8_t> image_batch(batch * side * side);
    std::vector<float> label_batch(batch * classes);
    for (hsize_t first = 0; first < n; first += batch) {
      const hsize_t rows = std::min(batch, n - first);
      source(first, rows, image_batch.data(), label_batch.data());
      write_rows(images, H5T_NATIVE_UINT8, {n, side, side}, first, rows, image_batch.data());
      write_rows(labels, H5T_NATIVE_FLOAT, {n, classes}, first, rows, label_batch.data());
    }
    set_attr(w, samples, "labels_meaning", std::string("row i: the label weights the decoder was given for image i (one-hot, or a mix)"));
    if (!set.grid.empty()) write_grey_image(w, samples, "grid", set.grid.data(), set.grid_width, set.grid_height);
    else set_attr(w, samples, "grid_omitted", std::string("too many samples to tile: see /samples/images"));
  });
}

namespace {

// What a file of ours never holds, refused before any of it is read (docs/checkpoint-format.md, "Security").
constexpr std::size_t kMaxObjects = 4096;          // links in the whole file
constexpr std::size_t kMaxAttributes = 64;         // per object
constexpr hsize_t kMaxAttributeBytes = 1 << 20;    // one attribute's stored size (the config text is a few KiB)
constexpr hssize_t kMaxElements = hssize_t(1) << 28;  // one dataset's elements: 1 GiB of floats
constexpr int kMaxRank = 4;

struct Survey {
  std::size_t links = 0;
  std::string problem;  // the first refusal, if any
};

herr_t survey_attribute(hid_t object, const char* name, const H5A_info_t* info, void* data) {
  Survey& s = *static_cast<Survey*>(data);
  if (info->data_size > kMaxAttributeBytes) {
    s.problem = "attribute " + printable(name) + " holds " + std::to_string(info->data_size) + " bytes";
    return 1;
  }
  const hid_t attr = H5Aopen(object, name, H5P_DEFAULT);
  if (attr < 0) {
    s.problem = "cannot open attribute " + printable(name);
    return 1;
  }
  const hid_t space = H5Aget_space(attr);
  const int rank = space < 0 ? -1 : H5Sget_simple_extent_ndims(space);
  const hssize_t n = space < 0 ? -1 : H5Sget_simple_extent_npoints(space);
  if (space >= 0) H5Sclose(space);
  H5Aclose(attr);
  if (rank < 0 || rank > kMaxRank || n < 0 || n > 65536) s.problem = "attribute " + printable(name) + " has an impossible shape";
  return s.problem.empty() ? 0 : 1;
}

// Refuses a dataset whose data lives outside the file, is assembled from other files, or needs a filter other than
// deflate and shuffle (which could be a plugin), and one larger than any we write.
std::string survey_dataset(hid_t set, const std::string& name) {
  const hid_t dcpl = H5Dget_create_plist(set);
  if (dcpl < 0) return "cannot read the storage of dataset " + name;
  std::string problem;
  const H5D_layout_t layout = H5Pget_layout(dcpl);
  if (layout == H5D_VIRTUAL) problem = "dataset " + name + " is virtual (assembled from other files)";
  else if (layout != H5D_CONTIGUOUS && layout != H5D_CHUNKED && layout != H5D_COMPACT) problem = "dataset " + name + " has an unknown layout";
  else if (H5Pget_external_count(dcpl) != 0) problem = "dataset " + name + " keeps its data in external files";
  const int filters = problem.empty() ? H5Pget_nfilters(dcpl) : 0;
  for (int i = 0; i < filters && problem.empty(); ++i) {
    unsigned flags = 0, config = 0;
    std::size_t nvalues = 0;
    char filter_name[64] = "";
    const H5Z_filter_t id = H5Pget_filter2(dcpl, unsigned(i), &flags, &nvalues, nullptr, sizeof filter_name, filter_name, &config);
    if (id != H5Z_FILTER_DEFLATE && id != H5Z_FILTER_SHUFFLE)
      problem = "dataset " + name + " needs filter " + std::to_string(id) + " (" + printable(filter_name) + "); only deflate and shuffle are read";
  }
  H5Pclose(dcpl);
  if (!problem.empty()) return problem;
  const hid_t space = H5Dget_space(set);
  const int rank = space < 0 ? -1 : H5Sget_simple_extent_ndims(space);
  const hssize_t n = space < 0 ? -1 : H5Sget_simple_extent_npoints(space);
  if (space >= 0) H5Sclose(space);
  if (rank < 0 || rank > kMaxRank || n < 0 || n > kMaxElements) return "dataset " + name + " has an impossible shape";
  const hid_t type = H5Dget_type(set);
  const std::size_t bytes = type < 0 ? 0 : H5Tget_size(type);
  const H5T_class_t cls = type < 0 ? H5T_NO_CLASS : H5Tget_class(type);
  if (type >= 0) H5Tclose(type);
  const bool number = (cls == H5T_INTEGER || cls == H5T_FLOAT) && bytes > 0 && bytes <= 8;
  const bool text = cls == H5T_STRING && bytes > 0 && hsize_t(bytes) * hsize_t(n) <= kMaxAttributeBytes;  // the config's INI text
  if (!number && !text) return "dataset " + name + " holds neither numbers nor a short text";
  return {};
}

herr_t survey_link(hid_t group, const char* name, const H5L_info_t* info, void* data) {
  Survey& s = *static_cast<Survey*>(data);
  const std::string shown = printable(name);
  if (++s.links > kMaxObjects) s.problem = "holds more than " + std::to_string(kMaxObjects) + " objects";
  else if (info->type == H5L_TYPE_SOFT) s.problem = shown + " is a soft link";
  else if (info->type == H5L_TYPE_EXTERNAL) s.problem = shown + " is a link into another file";
  else if (info->type != H5L_TYPE_HARD) s.problem = shown + " is a user-defined link";
  if (!s.problem.empty()) return 1;
  H5O_info_t object{};
  if (H5Oget_info_by_name2(group, name, &object, H5O_INFO_BASIC | H5O_INFO_NUM_ATTRS, H5P_DEFAULT) < 0) {
    s.problem = "cannot read object " + shown;
    return 1;
  }
  if (object.num_attrs > kMaxAttributes) {
    s.problem = shown + " has " + std::to_string(object.num_attrs) + " attributes";
    return 1;
  }
  if (object.type != H5O_TYPE_GROUP && object.type != H5O_TYPE_DATASET) {
    s.problem = shown + " is neither a group nor a dataset";
    return 1;
  }
  const hid_t opened = H5Oopen(group, name, H5P_DEFAULT);
  if (opened < 0) {
    s.problem = "cannot open object " + shown;
    return 1;
  }
  if (object.type == H5O_TYPE_DATASET) s.problem = survey_dataset(opened, shown);
  hsize_t at = 0;
  if (s.problem.empty()) H5Aiterate2(opened, H5_INDEX_NAME, H5_ITER_NATIVE, &at, survey_attribute, &s);
  H5Oclose(opened);
  return s.problem.empty() ? 0 : 1;
}

// Opens path read-only, checking that it is an HDF5 file whose root attribute `format` is `format`, and that it holds
// nothing a file of ours never holds (before anything is read from its datasets).
hid_t open_for_reading(const std::filesystem::path& path, const Where& w, const std::string& format, const char* missing) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  // Filter plugins are code loaded from a directory the file's author may have chosen: none are loaded.
  H5PLset_loading_state(0);
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) w.fail("is a directory, not an HDF5 file");
  if (!std::filesystem::is_regular_file(path, ec)) w.fail(missing);
  if (H5Fis_hdf5(path.c_str()) <= 0) w.fail("not an HDF5 file (truncated or corrupt?)");
  const hid_t file = w.id(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT),
                          "cannot open (truncated, corrupt, or locked by a writer; on NFS or Lustre set HDF5_USE_FILE_LOCKING=FALSE)");
  Survey survey;
  hsize_t at = 0;
  H5Aiterate2(file, H5_INDEX_NAME, H5_ITER_NATIVE, &at, survey_attribute, &survey);
  if (survey.problem.empty() && H5Lvisit(file, H5_INDEX_NAME, H5_ITER_NATIVE, survey_link, &survey) < 0 && survey.problem.empty())
    survey.problem = "cannot list its objects (corrupt?)";
  if (!survey.problem.empty()) {
    H5Fclose(file);
    w.fail("refused: " + survey.problem);
  }
  if (H5Aexists(file, "format") <= 0 || get_string(w, file, "format") != format) {
    H5Fclose(file);
    w.fail("not a " + format + " file");
  }
  return file;
}

}  // namespace

Checkpoint read_checkpoint(const std::filesystem::path& path) {
  const Where w{path.string(), true};
  H5Id file(open_for_reading(path, w, kCheckpointFormat, "no such file"), H5Fclose);
  const long long fv = get_int(w, file, "format_version");
  if (fv != kCheckpointVersion)
    w.fail("format version " + std::to_string(fv) + ", this program reads version " + std::to_string(kCheckpointVersion));

  Checkpoint c;
  if (H5Lexists(file, "model", H5P_DEFAULT) <= 0) w.fail("missing group model");
  {
    H5Id model(w.id(H5Gopen2(file, "model", H5P_DEFAULT), "cannot open group model"), H5Gclose);
    if (H5Aexists(model, "hidden") <= 0) w.fail("missing attribute hidden");
    c.arch.hidden = read_widths(w, model, "hidden");
    if (H5Aexists(model, "conv_channels") > 0) c.arch.conv_channels = read_widths(w, model, "conv_channels");
    c.arch.latent = int(get_int(w, model, "latent"));
    c.arch.classes = int(get_int(w, model, "classes"));
    c.arch.image = int(get_int(w, model, "image"));
    c.arch.conditional = get_int(w, model, "conditional") != 0;
    // Written since the label could feed every decoder layer; a file without it has the label at the first only.
    c.arch.label_every_layer = H5Aexists(model, "label_every_layer") > 0 && get_int(w, model, "label_every_layer") != 0;
    const std::string act = get_string(w, model, "activation");
    bool known = false;
    for (Activation a : {Activation::identity, Activation::elu, Activation::relu, Activation::leaky_relu, Activation::tanh})
      if (activation_name(a) == act) c.arch.act = a, known = true;
    if (!known) w.fail("unknown activation '" + act + "'");
    if (c.arch.latent <= 0 || c.arch.latent > 4096 || c.arch.classes < 0 || c.arch.classes > kNumClasses || c.arch.image != kImagePixels)
      w.fail("impossible architecture attributes in group model");
    if (c.arch.conditional && c.arch.classes < 1) w.fail("a conditional model with no classes in group model");
  }
  const ParamLayout layout = [&] {
    try {
      return ParamLayout(c.arch);
    } catch (const std::invalid_argument& e) {
      w.fail(std::string("impossible architecture in group model: ") + e.what());
    }
  }();
  if (layout.padded_size() > std::size_t(kMaxElements))
    w.fail("the architecture in group model has " + std::to_string(layout.parameter_count()) + " parameters, more than any checkpoint holds");
  read_layers(w, file, "model", layout, c.params);
  read_layers(w, file, "optimizer/m", layout, c.adam_m);
  read_layers(w, file, "optimizer/v", layout, c.adam_v);
  // only a run that kept the weights' moving average has the group
  if (H5Lexists(file, "optimizer/ema", H5P_DEFAULT) > 0) read_layers(w, file, "optimizer/ema", layout, c.ema);

  TrainingState& s = c.state;
  {
    H5Id opt(w.id(H5Gopen2(file, "optimizer", H5P_DEFAULT), "cannot open group optimizer"), H5Gclose);
    s.adam = {get_double(w, opt, "lr"), get_double(w, opt, "beta1"), get_double(w, opt, "beta2"), get_double(w, opt, "eps")};
    // Written since AdamW came; a file without it was trained with plain Adam.
    if (H5Aexists(opt, "weight_decay") > 0) s.adam.weight_decay = get_double(w, opt, "weight_decay");
    if (H5Aexists(opt, "ema_decay") > 0) s.adam.ema_decay = get_double(w, opt, "ema_decay");
  }
  if (H5Lexists(file, "training", H5P_DEFAULT) <= 0) w.fail("missing group training");
  H5Id training(w.id(H5Gopen2(file, "training", H5P_DEFAULT), "cannot open group training"), H5Gclose);
  s.epoch = int(get_int(w, training, "epoch"));
  s.step = long(get_int(w, training, "step"));
  s.updates = long(get_int(w, training, "updates"));
  s.skipped = long(get_int(w, training, "skipped_steps"));
  s.seed = std::uint64_t(get_int(w, training, "seed"));
  // Written since the binarised models came; a file without it was trained on grey levels.
  if (H5Aexists(training, "binarize") > 0) {
    const std::string b = get_string(w, training, "binarize");
    if (b != "none" && b != "dynamic") w.fail("unknown binarize '" + b + "' in group training");
    s.binarize = b == "dynamic";
  }
  if (H5Aexists(training, "precision") > 0) {
    const std::string p = get_string(w, training, "precision");
    if (p != "fp32" && p != "bf16") w.fail("unknown precision '" + p + "' in group training");
    s.precision = p == "bf16" ? Precision::bf16 : Precision::fp32;
  }
  const std::string mode = get_string(w, training, "mode");
  bool known = false;
  for (Mode m : {Mode::fast, Mode::balanced, Mode::quality})
    if (mode_name(m) == mode) s.scheduler.mode = m, known = true;
  if (!known) w.fail("unknown mode '" + mode + "' in group training");
  s.scheduler.mode_start = int(get_int(w, training, "mode_start"));
  s.scheduler.best = get_double(w, training, "plateau_best");
  s.scheduler.stale_epochs = int(get_int(w, training, "plateau_stale_epochs"));
  s.scheduler.advance_next = get_int(w, training, "plateau_advance_next") != 0;
  if (s.epoch < 0 || s.step < 0 || s.updates < 0 || s.updates > s.step) w.fail("impossible counters in group training");
  s.world_size = int(get_int(w, file, "world_size"));

  if (H5Lexists(file, "metrics", H5P_DEFAULT) > 0) {
    H5Id metrics(w.id(H5Gopen2(file, "metrics", H5P_DEFAULT), "cannot open group metrics"), H5Gclose);
    for (const MetricField& f : kMetricFields) {
      if (H5Lexists(metrics, f.name, H5P_DEFAULT) <= 0) w.fail(std::string("missing dataset metrics/") + f.name);
      hsize_t n = 0;
      w.check(H5LTget_dataset_info(metrics, f.name, &n, nullptr, nullptr), "cannot inspect the metrics table");
      if (c.metrics.empty()) c.metrics.resize(n);
      if (n != c.metrics.size()) w.fail(std::string("dataset metrics/") + f.name + " has a different number of rows");
      std::vector<double> column(n);
      w.check(H5LTread_dataset_double(metrics, f.name, column.data()), "cannot read the metrics table");
      for (std::size_t i = 0; i < n; ++i) f.set(c.metrics[i], column[i]);
    }
  }

  if (H5Lexists(file, "config", H5P_DEFAULT) <= 0) w.fail("missing dataset config");
  {
    H5Id set(w.id(H5Dopen2(file, "config", H5P_DEFAULT), "cannot open dataset config"), H5Dclose);
    H5Id type(H5Dget_type(set), H5Tclose);
    if (H5Tget_class(type) != H5T_STRING) w.fail("dataset config is not a string");
    std::string text(H5Tget_size(type), '\0');
    w.check(H5LTread_dataset_string(file, "config", text.data()), "cannot read dataset config");
    s.config_ini = text.c_str();
  }
  return c;
}

namespace {

struct ChildResult {
  int status = 0;
  std::string message;
};

// One checking child for at most `seconds`: its wait status and message, or nothing when it did not finish (then it has
// been killed and reaped).
std::optional<ChildResult> run_checking_child(const std::filesystem::path& path, const std::function<void(const std::filesystem::path&)>& read,
                                              int seconds) {
  std::fflush(stdout);
  std::fflush(stderr);
  int fds[2];
  if (::pipe(fds) != 0) throw std::runtime_error(path.string() + ": cannot create a pipe: " + std::strerror(errno));
  const pid_t child = ::fork();
  if (child < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    throw std::runtime_error(path.string() + ": cannot fork to check it: " + std::strerror(errno));
  }
  if (child == 0) {
    ::close(fds[0]);
    // A crash must end the child at once, not run a handler inherited from the parent (a sanitizer's, a fuzzer's).
    for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT}) std::signal(sig, SIG_DFL);
    int code = 0;
    std::string message;
    try {
      read(path);
    } catch (const UsageError& e) {
      code = kExitUsage, message = e.what();
    } catch (const std::exception& e) {
      code = kExitFailure, message = e.what();
    }
    for (std::size_t done = 0; done < message.size();) {
      const ssize_t n = ::write(fds[1], message.data() + done, message.size() - done);
      if (n <= 0) break;
      done += std::size_t(n);
    }
    ::_exit(code);  // no destructors, no atexit handlers: they belong to the parent
  }
  ::close(fds[1]);
  ChildResult r;
  char buffer[4096];
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    pollfd p{fds[0], POLLIN, 0};
    const int ready = left > 0 ? ::poll(&p, 1, int(left)) : 0;
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) {
      ::kill(child, SIGKILL);
      while (::waitpid(child, nullptr, 0) < 0 && errno == EINTR) {
      }
      ::close(fds[0]);
      return std::nullopt;
    }
    const ssize_t n = ready < 0 ? -1 : ::read(fds[0], buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // the child has exited (or the pipe failed): its status says which
    r.message.append(buffer, std::size_t(n));
  }
  ::close(fds[0]);
  while (::waitpid(child, &r.status, 0) < 0 && errno == EINTR) {
  }
  return r;
}

constexpr int kCheckSeconds = 120;  // a v3 checkpoint takes 0.1 s to check; a file at the size limits, seconds

}  // namespace

void check_in_child(const std::filesystem::path& path, const std::function<void(const std::filesystem::path&)>& read) {
  // A child forked from a threaded process can block for ever on a lock another thread held at the fork (seen once under
  // ASan, whose allocator in GCC 12 takes no lock across fork), and a malformed file could make the library loop. A child
  // that does not finish in time is killed and the check made once more: a second time is the file's doing.
  std::optional<ChildResult> r = run_checking_child(path, read, kCheckSeconds);
  if (!r) r = run_checking_child(path, read, kCheckSeconds);
  if (!r)
    throw UsageError(printable(path.string(), 200) + ": reading it did not finish within " + std::to_string(kCheckSeconds) +
                     " s, twice: the file is corrupt or made to stall the reader; it was not loaded");
  const int status = r->status;
  const std::string& message = r->message;
  // Our own failures always say what they were; a child that dies or exits without a word was ended by the library.
  const bool crashed = WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) != 0 && message.empty());
  if (crashed)
    throw UsageError(printable(path.string(), 200) + ": reading it crashed the HDF5 library (" +
                     (WIFSIGNALED(status) ? std::string(strsignal(WTERMSIG(status))) : "exit " + std::to_string(WEXITSTATUS(status))) +
                     "): the file is corrupt or made to attack the reader; it was not loaded");
  if (WIFEXITED(status) && WEXITSTATUS(status) == kExitUsage) throw UsageError(message);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw std::runtime_error(message.empty() ? path.string() + ": the check failed" : message);
}

void CheckpointAverage::add(Checkpoint c, const std::string& name) {
  if (count_ == 0) {
    first_name_ = name;
    first_arch_ = c.arch.describe();
    first_binarize_ = c.state.binarize;
    sum_.assign(c.params.size(), 0.0);
  } else if (c.arch.describe() != first_arch_ || c.params.size() != sum_.size()) {
    throw UsageError(name + ": another architecture (" + c.arch.describe() + ") than " + first_name_ + "'s (" + first_arch_ + ")");
  } else if (c.state.binarize != first_binarize_) {
    throw UsageError(name + ": trained on " + (c.state.binarize ? "binarised" : "grey") + " images, " + first_name_ + " on " +
                     (first_binarize_ ? "binarised" : "grey") + " ones");
  }
  for (std::size_t j = 0; j < sum_.size(); ++j) sum_[j] += c.params[j];
  last_ = std::move(c);
  ++count_;
}

Checkpoint CheckpointAverage::mean() && {
  if (count_ < 2) throw UsageError("averaging needs two checkpoints or more");
  Checkpoint m = std::move(last_);
  for (std::size_t j = 0; j < sum_.size(); ++j) m.params[j] = float(sum_[j] / double(count_));
  m.ema.clear();  // the last run's moving average is not the mean's
  return m;
}

void select_weights(Checkpoint& c, const std::string& which, const std::string& name) {
  if (which == "raw") return;
  if (which != "ema") throw UsageError("option --weights: unknown value " + in_quotes(which) + " (expected raw or ema)");
  if (c.ema.empty()) throw UsageError(name + ": holds no moving average of the weights (the run had no --ema-decay)");
  c.params = std::move(c.ema);
  c.ema.clear();
}

Checkpoint read_checkpoint_guarded(const std::filesystem::path& path) {
  check_in_child(path, [](const std::filesystem::path& p) { read_checkpoint(p); });
  return read_checkpoint(path);
}

ClassifierWeights read_classifier_guarded(const std::filesystem::path& path) {
  check_in_child(path, [](const std::filesystem::path& p) { read_classifier(p); });
  return read_classifier(path);
}

ClassifierWeights read_classifier(const std::filesystem::path& path) {
  const Where w{path.string(), true};
  H5Id file(open_for_reading(path, w, "vae_dist-classifier", "no such file (the classifier; give it with --classifier)"), H5Fclose);
  ClassifierWeights c;
  const auto layer = [&](const char* name, std::vector<float>& weight, std::vector<hsize_t> shape, std::vector<float>& bias) {
    if (H5Lexists(file, name, H5P_DEFAULT) <= 0) w.fail(std::string("missing group ") + name);
    H5Id g(w.id(H5Gopen2(file, name, H5P_DEFAULT), std::string("cannot open group ") + name), H5Gclose);
    std::size_t n = 1;
    for (hsize_t d : shape) n *= std::size_t(d);
    weight.resize(n);
    bias.resize(std::size_t(shape[0]));
    read_array(w, g, name, "weight", weight.data(), shape);
    read_array(w, g, name, "bias", bias.data(), {shape[0]});
  };
  layer("conv1", c.conv1_w, {16, 1, 5, 5}, c.conv1_b);
  layer("conv2", c.conv2_w, {32, 16, 5, 5}, c.conv2_b);
  layer("fc1", c.fc1_w, {64, 1568}, c.fc1_b);
  layer("fc2", c.fc2_w, {10, 64}, c.fc2_b);
  c.test_accuracy = get_double(w, file, "test_accuracy");
  if (H5Lexists(file, "reference", H5P_DEFAULT) <= 0) w.fail("missing group reference");
  H5Id ref(w.id(H5Gopen2(file, "reference", H5P_DEFAULT), "cannot open group reference"), H5Gclose);
  c.reference_images.resize(32 * std::size_t(kImagePixels));
  c.reference_logits.resize(32 * 10);
  read_array(w, ref, "reference", "images", c.reference_images.data(), {32, hsize_t(kImageSide), hsize_t(kImageSide)});
  read_array(w, ref, "reference", "logits", c.reference_logits.data(), {32, 10});
  return c;
}

}  // namespace vae
