// One node, one backward pass: the ranks share activations and parameters in MPI shared memory and each forms its rows.
#include "sync/node_shared.hpp"

#include <chrono>
#include <cstring>

namespace vae {
namespace {

// What a rank tells the others of its node after its backward pass, in its cache line of a shared window: the fence that
// ends the backward pass shows these too, so the step needs no collective of its own.
struct StepRecord {
  double recon, kl;
  std::int32_t finite, stop, rank;  // rank: in the job's communicator
};
constexpr std::size_t kStepRecordFloats = 16;
static_assert(sizeof(StepRecord) <= kStepRecordFloats * sizeof(float));

void post_record(NodeSegments& node, const StepRecord& record) { std::memcpy(node.mine().data(), &record, sizeof record); }

StepRecord record_of(const NodeSegments& node, int rank) {
  StepRecord record{};
  std::memcpy(&record, node.segments()[std::size_t(rank)], sizeof record);
  return record;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

NodeSharedSync::NodeSharedSync(const SyncSetup& s)
    : GradientSync(s), node_rank_(s.comm->local_rank()), node_size_(s.comm->local_size()) {
  const auto bytes = Network<float>::arena_bytes(cfg().arch, layout(), setup_.local_batch, std::size_t(node_size_), shadowed_kernels(),
                                                    cfg().dropout > 0);
  net_own_bytes_ = bytes.first;
  act_bytes_ = bytes.second;
  const auto& layers = layout().layers();
  for (std::size_t l = layers.size(); l-- > 0;) {
    const LayerSpec& d = layers[l];
    const auto [i0, i1] = Network<float>::weight_rows(cfg().arch, d, l, std::size_t(node_rank_), std::size_t(node_size_));
    // A layer's bias sits just before its weights, so the first rank's share (the first rows and the bias) is one range.
    const std::size_t begin = node_rank_ == 0 ? d.b_offset : d.w_offset + i0 * d.row_size();
    owned_.push_back({begin, d.w_offset + i1 * d.row_size() - begin});
    owned_layer_.push_back(l);
  }
}

std::string NodeSharedSync::describe() const {
  return "one backward pass shared by the node's " + std::to_string(node_size_) + " ranks";
}

// The network is made in attach(), over shared memory that only exists from there; its own part is in the pool.
void NodeSharedSync::carve(Arena& pool) { net_memory_ = pool.take<std::byte>(net_own_bytes_); }

std::size_t NodeSharedSync::shared_bytes() const {
  return act_bytes_ + 3 * layout().padded_size() * sizeof(float) + weight_copy_words(layout(), *setup_.kernels) * sizeof(std::uint32_t);
}

void NodeSharedSync::attach() {
  const Communicator& n = node();
  records_ = std::make_unique<NodeSegments>(n, kStepRecordFloats);
  acts_ = std::make_unique<NodeSegments>(n, (act_bytes_ + sizeof(float) - 1) / sizeof(float), true);
  Arena own = Arena::over(net_memory_), shared = Arena::over(std::as_writable_bytes(acts_->segment(0)));
  net_ = std::make_unique<Network<float>>(cfg().arch, layout(), setup_.local_batch, own,
                                          RowShare{&shared, std::size_t(node_rank_), std::size_t(node_size_)}, shadowed_kernels(),
                                          cfg().dropout > 0);
  // The bf16 weight copy follows the parameters in their window, so the fence that shows the one shows the other.
  const std::size_t P = layout().padded_size(), copy_words = weight_copy_words(layout(), *setup_.kernels);
  static_assert(sizeof(float) == sizeof(std::uint32_t));
  params_window_ = std::make_unique<NodeSegments>(n, P + copy_words, true);
  params_ = params_window_->segment(0).first(P);
  copy_words_ = {reinterpret_cast<std::uint32_t*>(params_window_->segment(0).data() + P), copy_words};
  moments_ = std::make_unique<NodeSegments>(n, (cfg().ema_decay > 0 ? 3 : 2) * layout().padded_size(), true);
}

void NodeSharedSync::set_parameters(const std::function<void(std::span<float>)>& fill) {
  if (node_rank_ == 0) fill(params_);
  params_window_->fence();
}

void NodeSharedSync::start_step(long step) {
  step_ = step;
  grads_finite_ = true;
}

void NodeSharedSync::rows_ready(std::size_t layer) {
  const auto t0 = std::chrono::steady_clock::now();
  beat("backward", "the node's rows for the weight gradient of layer", long(layer));
  records_->post(++rows_posted_);
  if (needs_progress()) records_->wait_for(rows_posted_, [](void* self) { static_cast<NodeSharedSync*>(self)->progress(); }, this);
  else records_->wait_for(rows_posted_);
  rows_wait_ += seconds_since(t0);
}

StepVerdict NodeSharedSync::agree(const StepReport& mine) {
  beat("agree", "the step records of the node's ranks");
  post_record(*records_, {mine.recon, mine.kl, mine.finite && grads_finite_ ? 1 : 0, mine.stop ? 1 : 0, comm().rank()});
  records_->fence();  // every rank's weight-gradient rows and record are written and visible
  StepVerdict v;
  int found = -1;
  for (int r = 0; r < node_size_; ++r) {
    const StepRecord theirs = record_of(*records_, r);
    if (!theirs.finite && found < 0) found = theirs.rank;
    v.recon += theirs.recon;
    v.kl += theirs.kl;
    v.stop = v.stop || theirs.stop;
  }
  v.bad_rank = found;
  combine(v);
  if (v.bad_rank < 0) return v;
  beat("agree", "the sums in flight of a failed step");
  finish_in_flight();
  const int source = lowest(trace(mine.finite, found));
  v.bad_rank = source < comm().size() ? source : 0;
  return v;
}

int NodeSharedSync::trace(bool loss_finite, int found) {
  records_->fence();  // every rank has read the step's records: they can be written again
  post_record(*records_, {0, 0, loss_finite && net_->rows_finite(setup_.local_batch) ? 1 : 0, 0, comm().rank()});
  records_->fence();
  int source = found;
  for (int r = node_size_ - 1; r >= 0; --r)
    if (!record_of(*records_, r).finite) source = record_of(*records_, r).rank;
  records_->fence();  // no rank writes its next record before every rank has read this one
  return source < 0 ? comm().size() : source;
}

double NodeSharedSync::update(const Apply& apply) {
  double waited = 0;
  for (std::size_t i = 0; i < owned_.size(); ++i) {
    waited += wait_range(i);
    apply(owned_[i].first, owned_[i].second);
  }
  // The fence shows the updated rows to every rank of the node and frees the activations and records for the next step.
  beat("update", "the node's ranks after their updates");
  const auto t0 = std::chrono::steady_clock::now();
  records_->fence();
  return waited + seconds_since(t0);
}

GradientSync::OptimizerState NodeSharedSync::checkpoint_state(const OptimizerState& mine) {
  // Each rank holds the state of its own rows: they meet in the node's staging copy, which its first rank reads.
  const std::size_t P = layout().padded_size();
  const std::span<float> staged = moments_->segment(0);
  const std::span<const float> parts[] = {mine.m, mine.v, mine.ema};
  for (std::size_t i = 0; i < 3; ++i)
    if (!parts[i].empty())
      for (const auto& [begin, count] : owned_) std::copy_n(parts[i].data() + begin, count, staged.data() + i * P + begin);
  moments_->fence();
  return {staged.first(P), staged.subspan(P, P), mine.ema.empty() ? std::span<const float>{} : staged.subspan(2 * P, P)};
}

std::unique_ptr<GradientSync> make_node_shared_sync(const SyncSetup& setup) { return std::make_unique<NodeSharedSync>(setup); }

}  // namespace vae
