// Run under mpiexec -n 2: allreduce and error agreement, and training at -n 2 against -n 1 on the same global batches.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <memory>

#include "test_util.hpp"
#include "vae/communicator.hpp"
#include "vae/config.hpp"
#include "vae/trainer.hpp"

namespace vae {
namespace {

const Communicator& world() {
  static const Communicator c = Communicator::world();
  return c;
}

TEST(MpiTest, AllreduceSumsEveryElement) {
  const Communicator& comm = world();
  const int P = comm.size(), r = comm.rank();
  std::vector<float> f(1000);
  std::vector<double> d(3);
  for (std::size_t i = 0; i < f.size(); ++i) f[i] = float(r + 1) * float(i);
  d = {double(r), 1.0, -2.5 * r};
  comm.allreduce_sum(f);
  comm.allreduce_sum(d);
  const float ranks = float(P * (P + 1) / 2);
  for (std::size_t i = 0; i < f.size(); ++i) ASSERT_FLOAT_EQ(f[i], ranks * float(i));
  EXPECT_DOUBLE_EQ(d[0], P * (P - 1) / 2.0);
  EXPECT_DOUBLE_EQ(d[1], P);
  EXPECT_DOUBLE_EQ(d[2], -2.5 * P * (P - 1) / 2.0);
}

TEST(MpiTest, ErrorAgreementReachesEveryRank) {
  const Communicator& comm = world();
  EXPECT_FALSE(comm.any_failed("", "test"));
  EXPECT_TRUE(comm.any_failed(comm.rank() == comm.size() - 1 ? "expected failure on the last rank" : "", "test"));
}

// The global batch is fixed; -n 2 splits it and averages gradients by allreduce, -n 1 (MPI_COMM_SELF) takes it whole.
TEST(MpiTest, TwoRanksTrainLikeOne) {
  const Communicator& comm = world();
  ASSERT_EQ(comm.size(), 2) << "run with mpiexec -n 2";
  // Rank 0's temporary directory is everyone's: its path is broadcast.
  std::unique_ptr<test::TempDir> owned;
  char path[512] = {};
  if (comm.rank() == 0) {
    owned = std::make_unique<test::TempDir>();
    test::write_synthetic_mnist(owned->path(), 640, 96);
    std::snprintf(path, sizeof path, "%s", owned->path().c_str());
  }
  comm.broadcast(path, sizeof path);
  const std::filesystem::path dir(path);

  Config cfg;
  cfg.arch.hidden = {48, 24};
  cfg.arch.latent = 6;
  cfg.batch = 16;
  cfg.lr = 3e-3;
  cfg.epochs = 2;
  cfg.max_steps = 50;
  cfg.digits = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  cfg.data_dir = dir.string();
  cfg.progress = Progress::never;
  cfg.modes = {{{1, 0.5, 1.0, 1, 1.0}, {2, 1.0, 1.0, 0, 1.0}, {0, 1.0, 1.0, 0, 0.5}}};

  cfg.run_dir = (dir / "two").string();
  Trainer two(cfg, comm, 1);
  two.run();
  ASSERT_EQ(two.step_losses().size(), 50u);

  if (comm.rank() == 0) {
    const Communicator self = Communicator::self();
    cfg.run_dir = (dir / "one").string();
    Trainer one(cfg, self, 2);
    one.run();
    ASSERT_EQ(one.step_losses().size(), 50u);
    for (std::size_t s = 0; s < 50; ++s)
      EXPECT_NEAR(two.step_losses()[s], one.step_losses()[s], 1e-4 * std::abs(one.step_losses()[s])) << "step " << s + 1;
    EXPECT_LT(one.step_losses().back(), one.step_losses().front());
    ASSERT_EQ(one.history().size(), two.history().size());
    EXPECT_NEAR(two.history().back().test_elbo, one.history().back().test_elbo, 1e-4 * one.history().back().test_elbo);
  }
  comm.barrier();
}

}  // namespace
}  // namespace vae

int main(int argc, char** argv) {
  vae::MpiSession mpi(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
