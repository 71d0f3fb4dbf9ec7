// The CVAE's layer layout and its forward/backward pass, written once for float (training) and double (gradient checks).
#include "vae/model.hpp"

#include <cmath>
#include <sstream>

#include "vae/rng.hpp"

namespace vae {

std::string activation_name(Activation a) {
  switch (a) {
    case Activation::identity: return "identity";
    case Activation::elu: return "elu";
    case Activation::relu: return "relu";
    case Activation::leaky_relu: return "leaky_relu";
    case Activation::tanh: return "tanh";
  }
  return "?";
}

std::size_t Arch::max_hidden() const {
  std::size_t m = 0;
  for (int h : hidden) m = std::max(m, std::size_t(h));
  return m;
}

std::string Arch::describe() const {
  std::ostringstream os;
  const char* label = conditional ? "+10" : "";
  os << image << label;
  for (int h : hidden) os << " > " << h;
  os << " > 2x" << latent << " | " << latent << label;
  for (auto it = hidden.rbegin(); it != hidden.rend(); ++it) os << " > " << *it;
  os << " > " << image << ", " << activation_name(act);
  return os.str();
}

ParamLayout::ParamLayout(const Arch& arch) {
  auto add = [&](std::string name, std::size_t in, std::size_t out, Activation act) {
    layers_.push_back({std::move(name), in, out, act, 0, 0});
  };
  std::size_t in = arch.enc_in();
  for (std::size_t i = 0; i < arch.hidden.size(); ++i) {
    add("enc." + std::to_string(i), in, std::size_t(arch.hidden[i]), arch.act);
    in = std::size_t(arch.hidden[i]);
  }
  add("enc.head", in, 2 * std::size_t(arch.latent), Activation::identity);
  encoder_layers_ = layers_.size();
  in = arch.dec_in();
  for (std::size_t i = 0; i < arch.hidden.size(); ++i) {
    const std::size_t out = std::size_t(arch.hidden[arch.hidden.size() - 1 - i]);
    add("dec." + std::to_string(i), in, out, arch.act);
    in = out;
  }
  add("dec.out", in, std::size_t(arch.image), Activation::identity);

  constexpr std::size_t floats_per_line = kAlign / sizeof(float);
  for (auto it = layers_.rbegin(); it != layers_.rend(); ++it) {
    it->b_offset = padded_;
    padded_ += round_up(it->out, floats_per_line);
    it->w_offset = padded_;
    padded_ += round_up(it->in * it->out, floats_per_line);
    count_ += it->in * it->out + it->out;
  }
}

template <class T>
void init_parameters(const ParamLayout& layout, std::uint64_t seed, std::span<T> params) {
  std::fill(params.begin(), params.end(), T(0));
  for (std::size_t l = 0; l < layout.layers().size(); ++l) {
    const DenseSpec& s = layout.layers()[l];
    const double bound = 1.0 / std::sqrt(double(s.in));
    Rng rng(stream_key(seed, Stream::init, l));
    for (std::size_t i = 0; i < s.in * s.out; ++i) params[s.w_offset + i] = T((2.0 * rng.uniform() - 1.0) * bound);
    for (std::size_t i = 0; i < s.out; ++i) params[s.b_offset + i] = T((2.0 * rng.uniform() - 1.0) * bound);
  }
}

template void init_parameters<float>(const ParamLayout&, std::uint64_t, std::span<float>);
template void init_parameters<double>(const ParamLayout&, std::uint64_t, std::span<double>);

template <class T>
Network<T>::Network(const Arch& arch, const ParamLayout& layout, std::size_t max_batch, Arena& arena) : arch_(arch), max_batch_(max_batch) {
  const std::size_t B = max_batch, L = std::size_t(arch.latent);
  x_in_ = arena.take<T>(B * arch.enc_in());
  for (const DenseSpec& s : layout.layers()) hidden_.push_back(arena.take<T>(B * s.out));
  head_ = hidden_[layout.encoder_layers() - 1];
  logits_ = hidden_.back();
  eps_ = arena.take<T>(B * L);
  z_in_ = arena.take<T>(B * arch.dec_in());
  dlogits_ = arena.take<T>(B * std::size_t(arch.image));
  dhead_ = arena.take<T>(B * 2 * L);
  dz_in_ = arena.take<T>(B * arch.dec_in());
  dpp_[0] = arena.take<T>(B * arch.max_hidden());
  dpp_[1] = arena.take<T>(B * arch.max_hidden());

  const auto& layers = layout.layers();
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const bool first_enc = l == 0, first_dec = l == layout.encoder_layers();
    T* in = first_enc ? x_in_.data() : first_dec ? z_in_.data() : hidden_[l - 1].data();
    const std::size_t ld = first_enc ? arch.enc_in() : first_dec ? arch.dec_in() : layers[l - 1].out;
    const Activation in_act = (first_enc || first_dec) ? Activation::identity : layers[l - 1].act;
    stages_.push_back({&layers[l], in, ld, in_act, hidden_[l].data()});
  }
}

template <class T>
std::size_t Network<T>::workspace_bytes(const Arch& arch, const ParamLayout& layout, std::size_t max_batch) {
  Arena probe = Arena::measure();
  Network<T> n(arch, layout, max_batch, probe);
  return probe.used();
}

template <class T>
void Network<T>::load_example(std::size_t r, const std::uint8_t* pixels, int label) {
  T* x = x_in_.data() + r * arch_.enc_in();
  for (int i = 0; i < arch_.image; ++i) x[i] = T(pixels[i]) / T(255);
  if (!arch_.conditional) return;
  T* onehot = x + arch_.image;
  T* dec = z_in_.data() + r * arch_.dec_in() + arch_.latent;
  for (int c = 0; c < arch_.classes; ++c) onehot[c] = dec[c] = T(c == label ? 1 : 0);
}

template <class T>
void Network<T>::chain_forward(const Kernels<T>& k, const T* params, std::size_t first, std::size_t last, std::size_t n) {
  for (std::size_t l = first; l < last; ++l) {
    const Stage& s = stages_[l];
    // out [n × s.out] = act(in [n × s.in] · W [s.in × s.out] + b)
    k.dense_forward(s.in, s.ld_in, params + s.spec->w_offset, params + s.spec->b_offset, s.out, n, s.spec->in, s.spec->out, s.spec->act);
  }
}

template <class T>
void Network<T>::chain_backward(const Kernels<T>& k, const T* params, T* grads, std::size_t first, std::size_t last, T* d_top,
                                T* d_input, std::size_t ld_input, std::size_t n) {
  T* dy = d_top;
  int pp = 0;
  for (std::size_t l = last; l-- > first;) {
    const Stage& s = stages_[l];
    // dW [s.in × s.out] = inᵀ · dy,  db [s.out] = Σ dy
    k.dense_weight_grad(s.in, s.ld_in, dy, grads + s.spec->w_offset, grads + s.spec->b_offset, n, s.spec->in, s.spec->out);
    if (l == first && !d_input) break;
    const bool inner = l > first;
    T* dx = inner ? dpp_[pp].data() : d_input;
    pp ^= 1;
    // dx [n × s.in] = (dy · Wᵀ) ⊙ act'(in)
    k.dense_input_grad(dy, params + s.spec->w_offset, dx, inner ? s.spec->in : ld_input, n, s.spec->in, s.spec->out, s.in_act,
                       inner ? s.in : nullptr);
    dy = dx;
  }
}

template <class T>
double Network<T>::forward(const Kernels<T>& k, const T* params, std::size_t n) {
  const std::size_t enc_end = arch_.hidden.size() + 1;
  chain_forward(k, params, 0, enc_end, n);
  // z [n × L] = μ + ε·σ, written into the first L columns of the decoder input
  kl_ = k.reparam_kl_forward(head_.data(), eps_.data(), z_in_.data(), arch_.dec_in(), n, std::size_t(arch_.latent));
  chain_forward(k, params, enc_end, stages_.size(), n);
  return kl_;
}

template <class T>
typename Network<T>::Losses Network<T>::loss(const Kernels<T>& k, std::size_t n, T scale) {
  // logits [n × 784] against the encoder input's pixel columns (row stride enc_in)
  const double recon = k.bernoulli_nll(logits_.data(), x_in_.data(), arch_.enc_in(), dlogits_.data(), n, std::size_t(arch_.image), scale);
  return {recon, kl_};
}

template <class T>
void Network<T>::backward(const Kernels<T>& k, const T* params, T* grads, std::size_t n, T scale, T beta) {
  const std::size_t enc_end = arch_.hidden.size() + 1;
  chain_backward(k, params, grads, enc_end, stages_.size(), dlogits_.data(), dz_in_.data(), arch_.dec_in(), n);
  // dhead [n × 2L] from dz (first L columns of dz_in) and β·∂KL
  k.reparam_kl_backward(head_.data(), eps_.data(), dz_in_.data(), arch_.dec_in(), dhead_.data(), n, std::size_t(arch_.latent), scale, beta);
  chain_backward(k, params, grads, 0, enc_end, dhead_.data(), nullptr, 0, n);
}

template <class T>
void Network<T>::decode(const Kernels<T>& k, const T* params, std::size_t n) {
  chain_forward(k, params, arch_.hidden.size() + 1, stages_.size(), n);
}

template class Network<float>;
template class Network<double>;

}  // namespace vae
