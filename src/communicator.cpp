// MPI calls, each checked; nothing else in the project includes mpi.h except the trainer through this header.
#include "vae/communicator.hpp"

#include "vae/kernels.hpp"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <thread>
#include <utility>

namespace vae {
namespace {

std::size_t round_up_floats(std::size_t n) { return (n + 15) / 16 * 16; }

}  // namespace

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw std::runtime_error(std::string(what) + " failed: " + std::string(msg, std::size_t(len)));
}

MpiSession::MpiSession(int& argc, char**& argv)
    : launched_(std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMIX_RANK") || std::getenv("PMI_RANK")) {
  int provided = 0;
  check_mpi(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
}

MpiSession::~MpiSession() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

Communicator Communicator::wrap(MPI_Comm comm, bool owned) {
  Communicator c;
  c.comm_ = comm;
  c.owned_ = owned;
  check_mpi(MPI_Comm_set_errhandler(c.comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  check_mpi(MPI_Comm_rank(c.comm_, &c.rank_), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(c.comm_, &c.size_), "MPI_Comm_size");
  MPI_Comm local = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(c.comm_, MPI_COMM_TYPE_SHARED, c.rank_, MPI_INFO_NULL, &local), "MPI_Comm_split_type");
  check_mpi(MPI_Comm_size(local, &c.local_size_), "MPI_Comm_size(local)");
  check_mpi(MPI_Comm_rank(local, &c.local_rank_), "MPI_Comm_rank(local)");
  MPI_Comm_free(&local);
  // Nodes: the ranks that are first on their node. Uniform when the smallest and largest node hold as many ranks.
  int counts[3] = {c.local_rank_ == 0 ? 1 : 0, c.local_size_, -c.local_size_};
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, counts, 1, MPI_INT, MPI_SUM, c.comm_), "MPI_Allreduce(nodes)");
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, counts + 1, 2, MPI_INT, MPI_MAX, c.comm_), "MPI_Allreduce(node sizes)");
  c.nodes_ = counts[0];
  c.uniform_ = counts[1] == -counts[2];
  return c;
}

Communicator Communicator::world() { return wrap(MPI_COMM_WORLD, false); }

Communicator Communicator::split(int colour) const {
  MPI_Comm comm = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split(comm_, colour, rank_, &comm), "MPI_Comm_split");
  return wrap(comm, true);
}

Communicator Communicator::node() const {
  MPI_Comm comm = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &comm), "MPI_Comm_split_type");
  return wrap(comm, true);
}

Communicator Communicator::cross() const { return split(local_rank_); }

Communicator::Communicator(Communicator&& o) noexcept
    : comm_(std::exchange(o.comm_, MPI_COMM_NULL)), owned_(std::exchange(o.owned_, false)), rank_(o.rank_), size_(o.size_),
      local_size_(o.local_size_), local_rank_(o.local_rank_), nodes_(o.nodes_), uniform_(o.uniform_) {}

Communicator::~Communicator() {
  int finalized = 1;
  MPI_Finalized(&finalized);
  if (owned_ && comm_ != MPI_COMM_NULL && !finalized) MPI_Comm_free(&comm_);
}

Communicator Communicator::self() {
  Communicator c;
  c.comm_ = MPI_COMM_SELF;
  check_mpi(MPI_Comm_set_errhandler(c.comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  return c;
}

void Communicator::allreduce_sum(std::span<float> data) const {
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, data.data(), int(data.size()), MPI_FLOAT, MPI_SUM, comm_), "MPI_Allreduce(float)");
}

MPI_Request Communicator::start_allreduce_sum(std::span<float> data) const {
  MPI_Request r = MPI_REQUEST_NULL;
  check_mpi(MPI_Iallreduce(MPI_IN_PLACE, data.data(), int(data.size()), MPI_FLOAT, MPI_SUM, comm_, &r), "MPI_Iallreduce");
  return r;
}

bool Communicator::test_all(std::span<MPI_Request> requests) const {
  int done = 0;
  check_mpi(MPI_Testall(int(requests.size()), requests.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall");
  return done != 0;
}

void Communicator::wait_all(std::span<MPI_Request> requests) const {
  check_mpi(MPI_Waitall(int(requests.size()), requests.data(), MPI_STATUSES_IGNORE), "MPI_Waitall");
}

namespace {

extern "C" void sum_bf16(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const std::uint16_t*>(in);
  auto* b = static_cast<std::uint16_t*>(inout);
  add_bf16(a, b, std::size_t(*len));
}

MPI_Op bf16_sum_op() {
  // Created on first use by the thread that drives MPI, freed by MPI_Finalize with the rest of MPI's objects.
  static MPI_Op op = [] {
    MPI_Op o = MPI_OP_NULL;
    check_mpi(MPI_Op_create(&sum_bf16, 1, &o), "MPI_Op_create(bf16 sum)");
    return o;
  }();
  return op;
}

}  // namespace

MPI_Request Communicator::start_allreduce_sum_bf16(std::span<std::uint16_t> data) const {
  MPI_Request r = MPI_REQUEST_NULL;
  check_mpi(MPI_Iallreduce(MPI_IN_PLACE, data.data(), int(data.size()), MPI_UINT16_T, bf16_sum_op(), comm_, &r),
            "MPI_Iallreduce(bf16)");
  return r;
}

void Communicator::allreduce_sum(std::span<double> data) const {
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, data.data(), int(data.size()), MPI_DOUBLE, MPI_SUM, comm_), "MPI_Allreduce(double)");
}

void Communicator::allreduce_max(std::span<double> data) const {
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, data.data(), int(data.size()), MPI_DOUBLE, MPI_MAX, comm_), "MPI_Allreduce(max)");
}

int Communicator::allreduce_min(int value) const {
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_INT, MPI_MIN, comm_), "MPI_Allreduce(min)");
  return value;
}

void Communicator::broadcast(void* data, std::size_t bytes, int root) const {
  check_mpi(MPI_Bcast(data, int(bytes), MPI_BYTE, root, comm_), "MPI_Bcast");
}

void Communicator::send(std::span<const std::byte> data, int peer) const {
  check_mpi(MPI_Send(data.data(), int(data.size()), MPI_BYTE, peer, 0, comm_), "MPI_Send");
}

void Communicator::receive(std::span<std::byte> data, int peer) const {
  check_mpi(MPI_Recv(data.data(), int(data.size()), MPI_BYTE, peer, 0, comm_, MPI_STATUS_IGNORE), "MPI_Recv");
}

void Communicator::barrier() const { check_mpi(MPI_Barrier(comm_), "MPI_Barrier"); }

bool Communicator::any_failed(const std::string& error, const char* program) const {
  const int mine = error.empty() ? size_ : rank_;
  int first = size_;
  check_mpi(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm_), "MPI_Allreduce(error agreement)");
  if (first == size_) return false;
  if (first == rank_) {
    if (size_ > 1 && rank_ != 0)
      std::fprintf(stderr, "%s: rank %d: error: %s\n", program, rank_, error.c_str());
    else
      std::fprintf(stderr, "%s: error: %s\n", program, error.c_str());
    std::fflush(stderr);
  }
  return true;
}

void Communicator::abort(int code) const {
  std::fflush(stdout);
  std::fflush(stderr);
  MPI_Abort(comm_ == MPI_COMM_NULL ? MPI_COMM_WORLD : comm_, code);
  std::_Exit(code);
}

NodeSegments::NodeSegments(const Communicator& comm, std::size_t floats, bool only_rank0)
    : rank_(comm.rank()), floats_(only_rank0 && comm.rank() != 0 ? 0 : round_up_floats(floats)) {
  // Each segment is followed by a cache line holding its rank's counter (post, wait_for).
  check_mpi(MPI_Comm_dup(comm.handle(), &comm_), "MPI_Comm_dup");
  MPI_Info info = MPI_INFO_NULL;
  check_mpi(MPI_Info_create(&info), "MPI_Info_create");
  MPI_Info_set(info, "alloc_shared_noncontig", "true");  // each rank's segment on its own pages
  float* base = nullptr;
  const int rc = MPI_Win_allocate_shared(MPI_Aint((floats_ + kCounterFloats) * sizeof(float)), int(sizeof(float)), info, comm_, &base, &win_);
  MPI_Info_free(&info);
  check_mpi(rc, "MPI_Win_allocate_shared");
  check_mpi(MPI_Win_lock_all(MPI_MODE_NOCHECK, win_), "MPI_Win_lock_all");
  for (int r = 0; r < comm.size(); ++r) {
    MPI_Aint size = 0;
    int unit = 0;
    float* p = nullptr;
    check_mpi(MPI_Win_shared_query(win_, r, &size, &unit, &p), "MPI_Win_shared_query");
    const std::size_t n = std::size_t(size) / sizeof(float) - kCounterFloats;
    bases_.push_back(p);
    views_.push_back(p);
    sizes_.push_back(n);
    counters_.push_back(reinterpret_cast<std::uint64_t*>(p + n));
  }
  std::fill(bases_[std::size_t(rank_)], bases_[std::size_t(rank_)] + floats_ + kCounterFloats, 0.0f);
  fence();
}

NodeSegments::~NodeSegments() {
  int finalized = 1;
  MPI_Finalized(&finalized);
  // Freeing a window waits for every rank: not while an exception is on its way to MPI_Abort, or the ranks still
  // computing would never arrive and this one would never abort.
  if (finalized || std::uncaught_exceptions() > 0) return;
  if (win_ != MPI_WIN_NULL) {
    MPI_Win_unlock_all(win_);
    MPI_Win_free(&win_);
  }
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void NodeSegments::post(std::uint64_t value) {
  std::atomic_ref<std::uint64_t>(*counters_[std::size_t(rank_)]).store(value, std::memory_order_release);
}

void NodeSegments::wait_for(std::uint64_t value, void (*idle)(void*), void* context) const {
  for (std::uint64_t* c : counters_) {
    // Spin briefly (the others are usually microseconds behind), then give the core away: with more ranks than cores the
    // rank being waited for may need this one.
    for (int spins = 0; std::atomic_ref<std::uint64_t>(*c).load(std::memory_order_acquire) < value; ++spins) {
      if (spins < 256) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      } else {
        if (idle) idle(context);
        sched_yield();
      }
    }
  }
}

void NodeSegments::fence() const {
  check_mpi(MPI_Win_sync(win_), "MPI_Win_sync");
  check_mpi(MPI_Barrier(comm_), "MPI_Barrier");
  check_mpi(MPI_Win_sync(win_), "MPI_Win_sync");
}

int default_threads(const Communicator& comm) {
  cpu_set_t set;
  CPU_ZERO(&set);
  int available = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : int(std::thread::hardware_concurrency());
  const int online = int(sysconf(_SC_NPROCESSORS_ONLN));
  if (available <= 0) available = 1;
  // A mask narrower than the machine means mpirun (or the batch system) already gave this rank its share.
  if (available < online) return available;
  return std::max(1, available / std::max(1, comm.local_size()));
}

std::string oversubscription_warning(const Communicator& comm, int threads) {
  const long cores = sysconf(_SC_NPROCESSORS_ONLN);
  const long wanted = long(comm.local_size()) * threads;
  if (comm.local_rank() != 0 || cores <= 0 || wanted <= cores) return {};
  char host[256] = "this node";
  gethostname(host, sizeof host - 1);
  return "node " + std::string(host) + " runs " + std::to_string(comm.local_size()) + " rank" + (comm.local_size() > 1 ? "s" : "") + " x " +
         std::to_string(threads) + " thread" + (threads > 1 ? "s" : "") + " = " + std::to_string(wanted) + " threads on " +
         std::to_string(cores) + " cores; steps will be slow (lower --threads or the ranks per node)";
}

}  // namespace vae
