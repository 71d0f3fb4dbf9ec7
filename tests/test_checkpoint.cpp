// HDF5 checkpoints: a bit-exact round trip, a readable layout (h5dump), and one test per kind of damage.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <csignal>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <random>

#include "test_util.hpp"
#include "vae/checkpoint.hpp"
#include "vae/errors.hpp"

namespace vae {
namespace {

class CheckpointFile : public ::testing::Test {
 protected:
  void SetUp() override {
    arch.hidden = {12, 7};
    arch.latent = 3;
    std::mt19937 gen(5);
    std::normal_distribution<float> d(0.0f, 1.0f);
    const ParamLayout lay = layout();
    for (auto* buf : {&params, &m, &v}) {
      buf->assign(lay.padded_size(), 0.0f);
      for (const LayerSpec& s : lay.layers()) {
        for (std::size_t i = 0; i < s.in * s.out; ++i) (*buf)[s.w_offset + i] = d(gen);
        for (std::size_t i = 0; i < s.out; ++i) (*buf)[s.b_offset + i] = d(gen);
      }
    }
    for (float& x : v) x = std::abs(x);
    state.epoch = 3;
    state.step = 123;
    state.updates = 121;
    state.skipped = 2;
    state.seed = 0x9e3779b97f4a7c15ull;
    state.world_size = 4;
    state.scheduler.mode = Mode::balanced;
    state.scheduler.mode_start = 2;
    state.scheduler.best = 101.25;
    state.scheduler.stale_epochs = 1;
    state.adam = {8e-4, 0.9, 0.999, 1e-8, 5e-2};
    state.config_ini = "preset = v3\nhidden = 12,7\n\n[fast]\nuntil = 2\n";
  }
  ParamLayout layout() const { return ParamLayout(arch); }
  std::filesystem::path file() const { return dir / "ckpt.h5"; }
  void write() { write_checkpoint(file(), arch, layout(), params, m, v, state); }
  // The message of reading the file, or "" if it read.
  std::string read_error() {
    try {
      read_checkpoint(file());
    } catch (const UsageError& e) {
      return e.what();
    }
    return "";
  }
  // Opens the written file read-write for a test to damage it.
  void damage(void (*how)(hid_t file)) {
    const hid_t f = H5Fopen(file().c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    how(f);
    H5Fclose(f);
  }

  test::TempDir dir;
  Arch arch;
  std::vector<float> params, m, v;
  TrainingState state;
};

TEST_F(CheckpointFile, RoundTripIsExact) {
  write();
  const Checkpoint c = read_checkpoint(file());
  EXPECT_EQ(c.arch.hidden, arch.hidden);
  EXPECT_EQ(c.arch.latent, 3);
  EXPECT_EQ(c.arch.act, Activation::elu);
  EXPECT_TRUE(c.arch.conditional);
  EXPECT_EQ(c.params, params);
  EXPECT_EQ(c.adam_m, m);
  EXPECT_EQ(c.adam_v, v);
  EXPECT_EQ(c.state.epoch, 3);
  EXPECT_EQ(c.state.step, 123);
  EXPECT_EQ(c.state.updates, 121);
  EXPECT_EQ(c.state.skipped, 2);
  EXPECT_EQ(c.state.seed, state.seed);
  EXPECT_EQ(c.state.world_size, 4);
  EXPECT_EQ(c.state.scheduler.mode, Mode::balanced);
  EXPECT_EQ(c.state.scheduler.mode_start, 2);
  EXPECT_DOUBLE_EQ(c.state.scheduler.best, 101.25);
  EXPECT_EQ(c.state.scheduler.stale_epochs, 1);
  EXPECT_DOUBLE_EQ(c.state.adam.lr, 8e-4);
  EXPECT_DOUBLE_EQ(c.state.adam.weight_decay, 5e-2);
  EXPECT_EQ(c.state.config_ini, state.config_ini);
  EXPECT_TRUE(c.ema.empty());
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) EXPECT_EQ(e.path(), file()) << "left behind: " << e.path();
}

// A run's moving average of the weights: a group of its own, read back exactly with its decay; --weights ema puts it in
// place of the parameters, and a file without one says so.
TEST_F(CheckpointFile, MovingAverageRoundTripAndSelection) {
  std::vector<float> ema(params.size());
  for (std::size_t i = 0; i < ema.size(); ++i) ema[i] = params[i] == 0 ? 0 : params[i] * 0.5f + 0.25f;  // the padding stays zero
  state.adam.ema_decay = 0.999;
  write_checkpoint(file(), arch, layout(), params, m, v, state, {{}, {}, 0, 0, ema});
  Checkpoint c = read_checkpoint(file());
  EXPECT_EQ(c.ema, ema);
  EXPECT_DOUBLE_EQ(c.state.adam.ema_decay, 0.999);
  Checkpoint raw = c;
  select_weights(raw, "raw", "ckpt.h5");
  EXPECT_EQ(raw.params, params);
  select_weights(c, "ema", "ckpt.h5");
  EXPECT_EQ(c.params, ema);

  auto error = [&](Checkpoint x, const std::string& which) {
    try {
      select_weights(x, which, "ckpt.h5");
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(error(c, "both"), "option --weights: unknown value 'both' (expected raw or ema)");
  write();
  EXPECT_EQ(error(read_checkpoint(file()), "ema"), "ckpt.h5: holds no moving average of the weights (the run had no --ema-decay)");
}

TEST_F(CheckpointFile, H5dumpReadsTheLayout) {
  write();
  const std::string out = (dir / "dump.txt").string();
  ASSERT_EQ(std::system(("h5dump -H " + file().string() + " > " + out + " 2>&1").c_str()), 0);
  std::ifstream in(out);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const char* want : {"GROUP \"model\"", "GROUP \"enc.0\"", "DATASET \"weight\"", "( 794, 12 )", "GROUP \"optimizer\"", "GROUP \"m\"",
                           "GROUP \"training\"", "DATASET \"config\"", "ATTRIBUTE \"format\""})
    EXPECT_NE(text.find(want), std::string::npos) << want << "\n" << text;
}

TEST_F(CheckpointFile, H5lsListsEveryDataset) {
  const std::vector<EpochRecord> metrics(2);
  const std::vector<std::uint8_t> grid(280 * 280, 7);
  write_checkpoint(file(), arch, layout(), params, m, v, state, {metrics, grid, 280, 0, {}});
  const std::string out = (dir / "ls.txt").string();
  ASSERT_EQ(std::system(("h5ls -r " + file().string() + " > " + out + " 2>&1").c_str()), 0);
  std::ifstream in(out);
  std::string text, line;
  while (std::getline(in, line)) text += line.substr(0, line.find(' ')) + "\n";  // the path column
  const ParamLayout l = layout();
  for (const LayerSpec& s : l.layers())
    for (const char* root : {"/model/", "/optimizer/m/", "/optimizer/v/"})
      for (const char* leaf : {"/weight", "/bias"}) EXPECT_NE(text.find(root + s.name + leaf + "\n"), std::string::npos) << root << s.name << leaf;
  for (const char* want : {"/config\n", "/metrics/test_elbo\n", "/samples/grid\n", "/samples/grey\n"})
    EXPECT_NE(text.find(want), std::string::npos) << want << "\n" << text;
}

TEST_F(CheckpointFile, WriteIntoMissingDirectoryFailsCleanly) {
  EXPECT_THROW(write_checkpoint(dir / "no" / "such" / "ckpt.h5", arch, layout(), params, m, v, state), std::runtime_error);
}

TEST_F(CheckpointFile, TruncatedFile) {
  write();
  std::filesystem::resize_file(file(), std::filesystem::file_size(file()) / 2);
  EXPECT_NE(read_error().find("ckpt.h5: "), std::string::npos);
}

TEST_F(CheckpointFile, NotHdf5) {
  std::ofstream(file()) << "hello";
  EXPECT_NE(read_error().find("not an HDF5 file"), std::string::npos) << read_error();
}

TEST_F(CheckpointFile, WrongFormatVersion) {
  write();
  damage([](hid_t f) {
    const long long version = 99;
    const hid_t a = H5Aopen(f, "format_version", H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_LLONG, &version);
    H5Aclose(a);
  });
  EXPECT_NE(read_error().find("format version 99, this program reads version 1"), std::string::npos) << read_error();
}

TEST_F(CheckpointFile, MissingDataset) {
  write();
  damage([](hid_t f) { H5Ldelete(f, "optimizer/v/dec.out/bias", H5P_DEFAULT); });
  EXPECT_NE(read_error().find("missing dataset optimizer/v/dec.out/bias"), std::string::npos) << read_error();
}

TEST_F(CheckpointFile, WrongShape) {
  write();
  damage([](hid_t f) {
    H5Ldelete(f, "model/enc.1/weight", H5P_DEFAULT);
    const hsize_t dims[2] = {7, 12};
    const hid_t space = H5Screate_simple(2, dims, nullptr);
    const hid_t set = H5Dcreate2(f, "model/enc.1/weight", H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    std::vector<float> zeros(84, 0.0f);
    H5Dwrite(set, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros.data());
    H5Dclose(set);
    H5Sclose(space);
  });
  EXPECT_NE(read_error().find("dataset model/enc.1/weight is 7x12, expected 12x7"), std::string::npos) << read_error();
}

TEST_F(CheckpointFile, NonFiniteValue) {
  const ParamLayout lay = layout();
  params[lay.layers()[2].w_offset + 5] = std::numeric_limits<float>::quiet_NaN();
  write();
  EXPECT_NE(read_error().find("dataset model/enc.head/weight holds a non-finite value at element 5"), std::string::npos) << read_error();
}

// ---- Hostile files: what a checkpoint never holds is refused before any of it is read ----

// Replaces model/enc.1/weight [12 × 7] with a dataset made with dcpl (a hostile storage or filter).
void replace_weight(hid_t f, hid_t dcpl) {
  H5Ldelete(f, "model/enc.1/weight", H5P_DEFAULT);
  const hsize_t dims[2] = {12, 7};
  const hid_t space = H5Screate_simple(2, dims, nullptr);
  const hid_t set = H5Dcreate2(f, "model/enc.1/weight", H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  ASSERT_GE(set, 0);
  H5Dclose(set);
  H5Sclose(space);
}

TEST_F(CheckpointFile, SoftLinkIsRefused) {
  write();
  damage([](hid_t f) { H5Lcreate_soft("/model/enc.0/weight", f, "model/alias", H5P_DEFAULT, H5P_DEFAULT); });
  EXPECT_NE(read_error().find("refused: model/alias is a soft link"), std::string::npos) << read_error();
}

TEST_F(CheckpointFile, ExternalLinkIsRefused) {
  write();
  damage([](hid_t f) { H5Lcreate_external("/etc/other.h5", "/secrets", f, "training/elsewhere", H5P_DEFAULT, H5P_DEFAULT); });
  EXPECT_NE(read_error().find("refused: training/elsewhere is a link into another file"), std::string::npos) << read_error();
}

TEST_F(CheckpointFile, ExternalStorageIsRefused) {
  // A weight whose bytes would be read from another file of the reader's machine.
  write();
  damage([](hid_t f) {
    const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_external(dcpl, "/etc/passwd", 0, 12 * 7 * 4);
    replace_weight(f, dcpl);
    H5Pclose(dcpl);
  });
  EXPECT_NE(read_error().find("refused: dataset model/enc.1/weight keeps its data in external files"), std::string::npos) << read_error();
}

TEST_F(CheckpointFile, VirtualDatasetIsRefused) {
  write();
  damage([](hid_t f) {
    const hsize_t dims[2] = {12, 7};
    const hid_t source = H5Screate_simple(2, dims, nullptr);
    const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_virtual(dcpl, source, "/tmp/elsewhere.h5", "/weight", source);
    replace_weight(f, dcpl);
    H5Pclose(dcpl);
    H5Sclose(source);
  });
  EXPECT_NE(read_error().find("refused: dataset model/enc.1/weight is virtual"), std::string::npos) << read_error();
}

TEST_F(CheckpointFile, FilterOtherThanDeflateAndShuffleIsRefused) {
  write();
  damage([](hid_t f) {
    const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    const hsize_t chunk[2] = {4, 7};
    H5Pset_chunk(dcpl, 2, chunk);
    H5Pset_fletcher32(dcpl);
    replace_weight(f, dcpl);
    H5Pclose(dcpl);
  });
  EXPECT_NE(read_error().find("refused: dataset model/enc.1/weight needs filter 3 (fletcher32); only deflate and shuffle are read"),
            std::string::npos)
      << read_error();
  unsigned plugins = 1;
  H5PLget_loading_state(&plugins);
  EXPECT_EQ(plugins, 0u) << "reading a file loads no filter plugins";
}

TEST_F(CheckpointFile, OversizedAttributeIsRefused) {
  write();
  // An attribute past 64 KiB needs the newer file format's dense attribute storage.
  const hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST);
  const hid_t f = H5Fopen(file().c_str(), H5F_ACC_RDWR, fapl);
  ASSERT_GE(f, 0);
  const hsize_t n = (1 << 20) / 8 + 1;
  const hid_t space = H5Screate_simple(1, &n, nullptr);
  const hid_t g = H5Gcreate2(f, "notes", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  const hid_t a = H5Acreate2(g, "padding", H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(a, 0);
  std::vector<double> zeros(n, 0.0);
  H5Awrite(a, H5T_NATIVE_DOUBLE, zeros.data());
  H5Aclose(a);
  H5Gclose(g);
  H5Sclose(space);
  H5Fclose(f);
  H5Pclose(fapl);
  EXPECT_NE(read_error().find("refused: attribute padding holds 1048584 bytes"), std::string::npos) << read_error();
}

TEST_F(CheckpointFile, TooManyAttributesAreRefused) {
  write();
  damage([](hid_t f) {
    const hid_t g = H5Gopen2(f, "training", H5P_DEFAULT);
    for (int i = 0; i < 65; ++i) {
      const hid_t space = H5Screate(H5S_SCALAR);
      const hid_t a = H5Acreate2(g, ("extra" + std::to_string(i)).c_str(), H5T_STD_I32LE, space, H5P_DEFAULT, H5P_DEFAULT);
      H5Aclose(a);
      H5Sclose(space);
    }
    H5Gclose(g);
  });
  EXPECT_NE(read_error().find("refused: training has"), std::string::npos) << read_error();
}

// Stochastic weight averaging by hand: parameters 1, 2 and 4 (and −3, 0, 0.5) average to 7/3 (and −5/6), rounded once
// from the double sum; everything else comes from the last checkpoint.
TEST_F(CheckpointFile, AverageIsTheMeanInACopyOfTheLast) {
  std::vector<Checkpoint> cs(3);
  const float first[] = {1, 2, 4}, second[] = {-3, 0, 0.5f};
  for (std::size_t i = 0; i < 3; ++i) {
    cs[i].arch = arch;
    cs[i].params = params;
    cs[i].params[0] = first[i];
    cs[i].params[1] = second[i];
    cs[i].adam_m = m;
    cs[i].state = state;
    cs[i].state.epoch = int(10 * (i + 1));
  }
  const std::vector<std::string> names = {"a.h5", "b.h5", "c.h5"};
  auto average = [&](std::vector<Checkpoint> in) {
    CheckpointAverage a;
    for (std::size_t i = 0; i < in.size(); ++i) a.add(std::move(in[i]), names[i]);
    return std::move(a).mean();
  };
  const Checkpoint mean = average(cs);
  EXPECT_EQ(mean.params[0], float(7.0 / 3.0));
  EXPECT_EQ(mean.params[1], float(-2.5 / 3.0));
  for (std::size_t j = 2; j < params.size(); ++j) ASSERT_EQ(mean.params[j], float((3.0 * double(params[j])) / 3.0)) << "parameter " << j;
  EXPECT_EQ(mean.state.epoch, 30);
  EXPECT_EQ(mean.adam_m, m);

  // one checkpoint, another architecture, other data: each refused, naming the file
  auto error = [&](std::vector<Checkpoint> in) {
    try {
      average(std::move(in));
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(error({cs[0]}), "averaging needs two checkpoints or more");
  std::vector<Checkpoint> wider = cs;
  wider[2].arch.latent = 4;
  wider[2].params.resize(ParamLayout(wider[2].arch).padded_size());
  EXPECT_NE(error(wider).find("c.h5: another architecture"), std::string::npos) << error(wider);
  std::vector<Checkpoint> binarised = cs;
  binarised[1].state.binarize = true;
  EXPECT_EQ(error(binarised), "b.h5: trained on binarised images, a.h5 on grey ones");
}

TEST(CheckInChild, ACrashOfTheReaderIsABadFile) {
  const std::filesystem::path file = "/tmp/some.h5";
  try {
    check_in_child(file, [](const std::filesystem::path&) { std::raise(SIGSEGV); });
    FAIL() << "a crash went unnoticed";
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()),
              "/tmp/some.h5: reading it crashed the HDF5 library (Segmentation fault): the file is corrupt or made to attack the reader; it was not loaded");
  }
  try {
    check_in_child(file, [](const std::filesystem::path& p) { throw UsageError(p.string() + ": missing group model"); });
    FAIL() << "the child's usage error was lost";
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()), "/tmp/some.h5: missing group model");
  }
  EXPECT_THROW(check_in_child(file, [](const std::filesystem::path&) { throw std::runtime_error("out of memory"); }), std::runtime_error);
  int runs = 0;
  check_in_child(file, [&](const std::filesystem::path&) { ++runs; });
  EXPECT_EQ(runs, 0) << "the check runs in the child, not here";
}

}  // namespace
}  // namespace vae
