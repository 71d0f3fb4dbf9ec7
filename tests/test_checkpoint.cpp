// HDF5 checkpoints: a bit-exact round trip, a readable layout (h5dump), and one test per kind of damage.
#include <gtest/gtest.h>
#include <hdf5.h>

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
      for (const DenseSpec& s : lay.layers()) {
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
    state.adam = {8e-4, 0.9, 0.999, 1e-8};
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
  EXPECT_EQ(c.state.config_ini, state.config_ini);
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) EXPECT_EQ(e.path(), file()) << "left behind: " << e.path();
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
  write_checkpoint(file(), arch, layout(), params, m, v, state, {metrics, grid, 280});
  const std::string out = (dir / "ls.txt").string();
  ASSERT_EQ(std::system(("h5ls -r " + file().string() + " > " + out + " 2>&1").c_str()), 0);
  std::ifstream in(out);
  std::string text, line;
  while (std::getline(in, line)) text += line.substr(0, line.find(' ')) + "\n";  // the path column
  const ParamLayout l = layout();
  for (const DenseSpec& s : l.layers())
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

}  // namespace
}  // namespace vae
