// The MPI boundary: initialisation, collectives with checked return codes, collective error agreement and abort.
#pragma once

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace vae {

// Throws std::runtime_error with MPI's own message when rc is not MPI_SUCCESS.
void check_mpi(int rc, const char* what);

// MPI_Init_thread on construction, MPI_Finalize on destruction.
class MpiSession {
 public:
  MpiSession(int& argc, char**& argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  // Whether a launcher (mpirun, srun) started this process; read before MPI_Init, because Open MPI's singleton start sets
  // the same variables a launcher would.
  bool launched() const { return launched_; }

 private:
  bool launched_ = false;
};

class Communicator {
 public:
  // MPI_COMM_WORLD with errors returned (not fatal), plus the node-local communicator for thread placement.
  static Communicator world();
  // A communicator of this process alone: the single-process run that distributed runs must reproduce.
  static Communicator self();

  // The ranks of this communicator with the same colour, in the same order (a new communicator, freed with the object).
  // Collective over this communicator.
  Communicator split(int colour) const;
  // The ranks of this communicator on this node (MPI_COMM_TYPE_SHARED). Collective.
  Communicator node() const;
  // The ranks with this rank's local index, one per node, in node order (Horovod's cross communicator). Collective.
  Communicator cross() const;

  Communicator(Communicator&& o) noexcept;
  Communicator& operator=(Communicator&&) = delete;
  Communicator(const Communicator&) = delete;
  ~Communicator();

  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_size() const { return local_size_; }  // ranks sharing this node
  int local_rank() const { return local_rank_; }  // this rank's place among them
  int nodes() const { return nodes_; }            // nodes this communicator spans
  bool uniform_nodes() const { return uniform_; }  // every node holds the same number of its ranks

  void allreduce_sum(std::span<float> data) const;
  // Non-blocking sum in place; complete it with test_all or wait_all. Every rank must start the same ones in the same order.
  MPI_Request start_allreduce_sum(std::span<float> data) const;
  // Drives outstanding requests forward (Open MPI progresses them only inside MPI calls); true when all are complete.
  bool test_all(std::span<MPI_Request> requests) const;
  void wait_all(std::span<MPI_Request> requests) const;
  // The same sum of bfloat16 values (the upper halves of floats, as uint16): each pair is added in fp32 and rounded to
  // nearest even, so half the bytes travel.
  MPI_Request start_allreduce_sum_bf16(std::span<std::uint16_t> data) const;
  void allreduce_sum(std::span<double> data) const;
  void allreduce_max(std::span<double> data) const;
  int allreduce_min(int value) const;
  void broadcast(void* data, std::size_t bytes, int root = 0) const;
  // Blocking point-to-point bytes (the link benchmark's ping-pong).
  void send(std::span<const std::byte> data, int peer) const;
  void receive(std::span<std::byte> data, int peer) const;
  void barrier() const;

  // Every rank calls this with its error ("" if none). Returns true on every rank if any rank failed; the lowest failing
  // rank has printed its message, so a usage error is reported once and every rank can exit 2 together.
  bool any_failed(const std::string& error, const char* program) const;

  MPI_Comm handle() const { return comm_; }

  [[noreturn]] void abort(int code) const;

 private:
  Communicator() = default;
  static Communicator wrap(MPI_Comm comm, bool owned);  // sets the error handler, rank, size and node shape
  MPI_Comm comm_ = MPI_COMM_NULL;
  bool owned_ = false;
  int rank_ = 0, size_ = 1, local_size_ = 1, local_rank_ = 0, nodes_ = 1;
  bool uniform_ = true;
};

// The gradient buffers of all ranks of a one-node job, in one MPI-3 shared-memory window: each rank writes its own
// segment, and sums are formed by reading the others' segments in place, with no copies through MPI.
class NodeSegments {
 public:
  // Collective over comm, whose ranks must all share this node. Each rank gets a segment of `floats` (or only rank 0, when
  // only_rank0: one buffer for the whole node), 64-byte aligned, zeroed.
  NodeSegments(const Communicator& comm, std::size_t floats, bool only_rank0 = false);
  ~NodeSegments();
  NodeSegments(const NodeSegments&) = delete;
  NodeSegments& operator=(const NodeSegments&) = delete;

  std::span<float> mine() { return {bases_[std::size_t(rank_)], floats_}; }
  std::span<const float* const> segments() const { return views_; }  // every rank's segment, in rank order
  std::span<float> segment(int rank) { return {bases_[std::size_t(rank)], sizes_[std::size_t(rank)]}; }
  // Every rank's writes so far are visible to every rank, and no rank goes on before all have arrived.
  void fence() const;
  // A counter per rank in the window, for waits inside a step that need no MPI call: post() raises this rank's counter to
  // value (its writes so far become visible with it); wait_for(value) returns once every rank's counter has reached value.
  // Counters only grow; a rank that died is never waited out here, but mpirun ends the job.
  void post(std::uint64_t value);
  // idle, if given, is called while waiting (to drive MPI requests in flight) after the first spins.
  void wait_for(std::uint64_t value, void (*idle)(void*) = nullptr, void* context = nullptr) const;

 private:
  MPI_Win win_ = MPI_WIN_NULL;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  std::size_t floats_ = 0;
  std::vector<const float*> views_;
  std::vector<float*> bases_;
  std::vector<std::size_t> sizes_;
  std::vector<std::uint64_t*> counters_;
  static constexpr std::size_t kCounterFloats = 16;  // one cache line
};

// Threads per rank when the user gives none: the cores this rank may run on (its affinity mask, which mpirun's binding
// narrows) divided by the ranks that share them.
int default_threads(const Communicator& comm);
// On a node's first rank, when its ranks' threads outnumber the node's cores: a one-line warning naming the node, its
// ranks × threads and its cores. Empty otherwise.
std::string oversubscription_warning(const Communicator& comm, int threads);

}  // namespace vae
