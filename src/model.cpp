// The CVAE's layer layout and its forward/backward pass, written once for float (training) and double (gradient checks).
#include "vae/model.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <utility>

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

std::vector<ConvShape> Arch::conv_shapes() const {
  std::vector<ConvShape> shapes;
  std::size_t c = 1, side = std::size_t(kImageSide);
  for (int out : conv_channels) {
    shapes.push_back({c, side, side, std::size_t(out), kConvKernel, kConvStride, kConvPad, false});
    c = std::size_t(out);
    side = shapes.back().out_h();
  }
  return shapes;
}

std::size_t Arch::features() const {
  if (!convolutional()) return std::size_t(image);
  return conv_shapes().back().out_size();
}

std::string Arch::describe() const {
  std::ostringstream os;
  const char* label = conditional ? "+10" : "";
  const std::vector<ConvShape> convs = conv_shapes();
  if (convs.empty()) os << image;
  else os << "1x28x28";
  for (const ConvShape& c : convs) os << " > conv " << c.out_c << "x" << c.out_h() << "x" << c.out_w();
  if (!convs.empty()) os << " = " << features();
  os << label;
  for (int h : hidden) os << " > " << h;
  os << " > 2x" << latent << " | " << latent << label;
  for (auto it = hidden.rbegin(); it != hidden.rend(); ++it) os << " > " << *it;
  if (!convs.empty()) os << " > " << features();
  for (auto it = convs.rbegin(); it != convs.rend(); ++it) os << " > convT " << it->in_c << "x" << it->in_h << "x" << it->in_w;
  os << (convs.empty() ? " > " : " = ") << image << ", " << activation_name(act);
  if (conditional && label_every_layer) os << ", label into every decoder layer";
  return os.str();
}

std::vector<std::size_t> LayerSpec::weight_dims() const {
  if (!conv) return {in, out};
  return {conv->weight_rows(), conv->transposed ? conv->out_c : conv->in_c, conv->k, conv->k};
}

ParamLayout::ParamLayout(const Arch& arch) {
  auto add = [&](std::string name, std::size_t in, std::size_t out, Activation act, std::optional<ConvShape> conv = {}) {
    layers_.push_back({std::move(name), in, out, act, 0, 0, conv});
  };
  const std::vector<ConvShape> convs = arch.conv_shapes();
  for (std::size_t i = 0; i < convs.size(); ++i) {
    // an odd side would not come back: the transpose of 7 → 3 gives 6
    if (convs[i].in_h % 2 != 0)
      throw std::invalid_argument(std::to_string(convs.size()) + " convolutions halve the 28-pixel side to an odd one before the last");
    convs[i].check();
    add("enc.conv" + std::to_string(i), convs[i].in_size(), convs[i].out_size(), arch.act, convs[i]);
  }
  std::size_t in = arch.features() + arch.label_width();
  for (std::size_t i = 0; i < arch.hidden.size(); ++i) {
    add("enc." + std::to_string(i), in, std::size_t(arch.hidden[i]), arch.act);
    in = std::size_t(arch.hidden[i]);
  }
  add("enc.head", in, 2 * std::size_t(arch.latent), Activation::identity);
  encoder_layers_ = layers_.size();
  in = arch.dec_in();
  const std::size_t label = arch.conditional && arch.label_every_layer ? std::size_t(arch.classes) : 0;
  for (std::size_t i = 0; i < arch.hidden.size(); ++i) {
    const std::size_t out = std::size_t(arch.hidden[arch.hidden.size() - 1 - i]);
    add("dec." + std::to_string(i), in, out, arch.act);
    in = out + label;
  }
  if (convs.empty()) {
    add("dec.out", in, std::size_t(arch.image), Activation::identity);
  } else {
    add("dec." + std::to_string(arch.hidden.size()), in, arch.features(), arch.act);
    for (std::size_t i = convs.size(); i-- > 0;) {
      // the transpose of encoder convolution i: from its output back to its input
      const ConvShape& c = convs[i];
      const ConvShape t{c.out_c, c.out_h(), c.out_w(), c.in_c, c.k, c.stride, c.pad, true};
      const bool last = i == 0;
      add(last ? "dec.out" : "dec.convT" + std::to_string(convs.size() - 1 - i), t.in_size(), t.out_size(),
          last ? Activation::identity : arch.act, t);
    }
  }

  constexpr std::size_t floats_per_line = kAlign / sizeof(float);
  for (auto it = layers_.rbegin(); it != layers_.rend(); ++it) {
    it->b_offset = padded_;
    padded_ += round_up(it->bias_count(), floats_per_line);
    it->w_offset = padded_;
    padded_ += round_up(it->weight_count(), floats_per_line);
    count_ += it->weight_count() + it->bias_count();
  }
}

std::size_t ParamLayout::max_dim() const {
  std::size_t m = 0;
  for (const LayerSpec& s : layers_)
    if (!s.conv) m = std::max({m, s.in, s.out});
  return m;
}

ConvSizes ParamLayout::conv_sizes() const {
  ConvSizes sizes;
  for (const LayerSpec& s : layers_)
    if (s.conv) sizes.add(*s.conv);
  return sizes;
}

WeightCopy make_weight_copy(const ParamLayout& layout, const Kernels<float>& k, const float* params, std::uint32_t* words) {
  constexpr std::size_t words_per_line = kAlign / sizeof(std::uint32_t);
  WeightCopy copy{params, words, {}, 0};
  for (const LayerSpec& s : layout.layers()) {
    // a convolution packs its W as it runs (a few thousand weights, read by every image's product)
    if (s.conv) continue;
    // no transposed form for the network's first layer, which has no input gradient
    WeightCopy::Layer l{s.w_offset, s.in, s.out, copy.size, 0, &s != &layout.layers().front()};
    copy.size += round_up(k.bf16_panel_words(s.in, s.out), words_per_line);
    l.trans = copy.size;
    if (l.transposed) copy.size += round_up(k.bf16_panel_words(s.out, s.in), words_per_line);
    copy.layers.push_back(l);
  }
  if (copy.size == 0) copy.layers.clear();
  return copy;
}

std::size_t weight_copy_words(const ParamLayout& layout, const Kernels<float>& k) { return make_weight_copy(layout, k, nullptr, nullptr).size; }

template <class T>
void init_parameters(const ParamLayout& layout, std::uint64_t seed, std::span<T> params) {
  std::fill(params.begin(), params.end(), T(0));
  for (std::size_t l = 0; l < layout.layers().size(); ++l) {
    const LayerSpec& s = layout.layers()[l];
    const double bound = 1.0 / std::sqrt(double(s.fan_in()));
    Rng rng(stream_key(seed, Stream::init, l));
    for (std::size_t i = 0; i < s.weight_count(); ++i) params[s.w_offset + i] = T((2.0 * rng.uniform() - 1.0) * bound);
    for (std::size_t i = 0; i < s.bias_count(); ++i) params[s.b_offset + i] = T((2.0 * rng.uniform() - 1.0) * bound);
  }
}

template void init_parameters<float>(const ParamLayout&, std::uint64_t, std::span<float>);
template void init_parameters<double>(const ParamLayout&, std::uint64_t, std::span<double>);

template <class T>
bool Network<T>::dropped_layer(const Arch& arch, const ParamLayout& layout, std::size_t l) {
  const std::size_t first = arch.conv_channels.size(), hidden = arch.hidden.size(), dec = layout.encoder_layers();
  return (l >= first && l < first + hidden) || (l >= dec && l < dec + hidden);
}

template <class T>
Network<T>::Network(const Arch& arch, const ParamLayout& layout, std::size_t max_batch, Arena& arena, const RowShare& share,
                    const Kernels<T>* bf16_for, bool dropout)
    : arch_(arch), max_batch_(max_batch), rank_(share.rank), ranks_(share.ranks) {
  const std::size_t B = max_batch, L = std::size_t(arch.latent), classes = arch.conditional ? std::size_t(arch.classes) : 0;
  Arena& node = share.arena ? *share.arena : arena;
  // This rank's rows [B × width] of a tensor every rank sharing the pass reads: [ranks·B × width] in the node's arena.
  auto rows = [&]<class U>(std::span<U> all, std::size_t width) {
    return std::span<U>(all.data() ? all.data() + rank_ * B * width : nullptr, B * width);
  };
  auto shared = [&](std::size_t width) { return rows(node.take<T>(ranks_ * B * width), width); };
  const std::span<std::uint8_t> all_pixels = node.take<std::uint8_t>(ranks_ * B * std::size_t(arch.image));
  const std::span<std::uint8_t> all_labels = node.take<std::uint8_t>(ranks_ * B);
  pixels_ = rows(all_pixels, std::size_t(arch.image));
  labels_ = rows(all_labels, 1);
  images_ = {pixels_.data(), std::size_t(arch.image), std::size_t(arch.image), labels_.data(), classes};
  all_images_ = {all_pixels.data(), std::size_t(arch.image), std::size_t(arch.image), all_labels.data(), classes};
  if (arch.convolutional()) x0_ = shared(std::size_t(arch.image));
  for (const LayerSpec& s : layout.layers()) hidden_.push_back(shared(s.out));
  mask_.resize(hidden_.size());
  masked_.resize(hidden_.size());
  for (std::size_t l = 0; dropout && l < hidden_.size(); ++l)
    if (dropped_layer(arch, layout, l)) {
      const std::size_t width = layout.layers()[l].out;
      // the next layer's weight gradient reads every rank's rows of the masked copy; the mask is applied to own rows only
      masked_[l] = shared(width);
      mask_[l] = arena.take<T>(B * width);
      if (mask_[l].data()) std::fill(mask_[l].begin(), mask_[l].end(), T(1));
    }
  head_ = hidden_[layout.encoder_layers() - 1];
  logits_ = hidden_.back();
  eps_ = arena.take<T>(B * L);
  z_in_ = shared(arch.dec_in());
  dlogits_ = shared(std::size_t(arch.image));
  dhead_ = shared(2 * L);
  dz_ = arena.take<T>(B * L);
  row_nll_ = arena.take<double>(B);
  row_weight_ = arena.take<T>(B);
  const auto& layers = layout.layers();
  enc_end_ = layout.encoder_layers();
  // the widest inner input gradient: the output of every layer but the encoder's head and the decoder's output
  std::size_t grad_width = 0;
  for (std::size_t l = 1; l < layers.size(); ++l)
    if (l != enc_end_) grad_width = std::max(grad_width, layers[l - 1].out);
  dpp_[0] = node.take<T>(ranks_ * B * grad_width);
  dpp_[1] = node.take<T>(ranks_ * B * grad_width);

  wide_.resize(layers.size());
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const bool first_enc = l == 0, first_dec = l == enc_end_;
    const bool network_input = first_enc || first_dec;
    // [prev | label]: the first dense layer after the convolutions, or a decoder layer with label_every_layer
    const bool widened = !network_input && layers[l].in > layers[l - 1].out;
    if (widened) wide_[l] = shared(layers[l].in);
    T* fed = network_input ? nullptr : masked_[l - 1].empty() ? hidden_[l - 1].data() : masked_[l - 1].data();
    T* in = first_enc ? x0_.data() : first_dec ? z_in_.data() : widened ? wide_[l].data() : fed;
    const std::size_t ld = first_enc ? (x0_.data() ? std::size_t(arch.image) : arch.enc_in()) : first_dec ? arch.dec_in() : layers[l].in;
    const Activation in_act = network_input ? Activation::identity : layers[l - 1].act;
    const T* prev = network_input ? nullptr : hidden_[l - 1].data();
    const std::size_t grad_cols = network_input ? (first_dec ? L : 0) : layers[l - 1].out;
    stages_.push_back({&layers[l], in, ld, in_act, hidden_[l].data(), prev, fed, grad_cols, widened});
  }
  // A convolution's products neither write nor read shadows, and its input and output are the dense layers' too: a conv
  // model's dense products pack their operands.
  if (bf16_for && !arch.convolutional() && !dropout) {
    // a shadow, in the node's arena, of `all` (every rank's rows, `width` wide)
    auto shadow = [&](const T* all, std::size_t width, typename Bf16Shadow<T>::Use use) {
      const std::size_t words = bf16_for->bf16_shadow_words(ranks_ * B, width);
      if (!words) return;
      const std::span<std::uint32_t> w = node.take<std::uint32_t>(words);
      // a node's shared memory comes zeroed (NodeSegments); the rank's own is zeroed here
      if (!share.arena && w.data()) std::fill(w.begin(), w.end(), 0u);
      shadows_.push_back({all, ranks_ * B, width, use, w.data()});
    };
    // a layer's output that the next layer reads as it is (not widened): its forward A and its weight gradient's Aᵀ
    for (std::size_t l = 1; l < stages_.size(); ++l)
      if (l != layout.encoder_layers() && !stages_[l].widened) {
        const std::size_t width = layers[l].in;
        shadow(hidden_[l - 1].data() ? hidden_[l - 1].data() - rank_ * B * width : nullptr, width, Bf16Shadow<T>::Use::activation);
      }
    // the loss's and the reparameterisation's gradients, which their kernels write with their bf16 forms: the top
    // layer's input gradient A and weight gradient B, of each chain
    const std::size_t image = std::size_t(arch.image);
    shadow(dlogits_.data() ? dlogits_.data() - rank_ * B * image : nullptr, image, Bf16Shadow<T>::Use::gradient);
    shadow(dhead_.data() ? dhead_.data() - rank_ * B * 2 * L : nullptr, 2 * L, Bf16Shadow<T>::Use::gradient);
    // an inner input gradient, where chain_backward writes it (ping-pong buffer pp, from the top of each chain): the
    // next input gradient's A and the next weight gradient's B
    std::vector<std::pair<int, std::size_t>> made;
    const std::size_t enc_end = layout.encoder_layers();
    for (const auto& [first, last] : {std::pair{enc_end, stages_.size()}, std::pair{std::size_t(0), enc_end}}) {
      int pp = 0;
      for (std::size_t l = last; l-- > first + 1; pp ^= 1) {
        const std::size_t width = stages_[l].grad_cols;
        if (std::find(made.begin(), made.end(), std::pair{pp, width}) != made.end()) continue;
        made.push_back({pp, width});
        shadow(dpp_[pp].data(), width, Bf16Shadow<T>::Use::gradient);
      }
    }
  }
  const bool stackable = !dropout && std::none_of(stages_.begin(), stages_.end(), [](const Stage& s) { return s.widened || s.spec->conv; });
  if (stackable)
    for (std::size_t l = layout.encoder_layers(); l < stages_.size(); ++l) {
      const Stage& s = stages_[l];
      decoder_calls_.push_back({s.in, s.ld_in, nullptr, nullptr, s.out, s.spec->in, s.spec->out, s.spec->act});
    }
}

template <class T>
std::size_t Network<T>::workspace_bytes(const Arch& arch, const ParamLayout& layout, std::size_t max_batch, const Kernels<T>* bf16_for,
                                        bool dropout) {
  Arena probe = Arena::measure();
  Network<T> n(arch, layout, max_batch, probe, {}, bf16_for, dropout);
  return probe.used();
}

template <class T>
std::pair<std::size_t, std::size_t> Network<T>::arena_bytes(const Arch& arch, const ParamLayout& layout, std::size_t max_batch,
                                                            std::size_t ranks, const Kernels<T>* bf16_for, bool dropout) {
  Arena own = Arena::measure(), node = Arena::measure();
  Network<T> n(arch, layout, max_batch, own, {&node, 0, ranks}, bf16_for, dropout);
  return {own.used(), node.used()};
}

template <class T>
std::pair<std::size_t, std::size_t> Network<T>::weight_rows(const Arch& arch, const LayerSpec& layer, std::size_t l, std::size_t r,
                                                            std::size_t ranks) {
  // an MLP's first layer splits its pixels; every other layer (a convolution too) W's first dimension
  const std::size_t rows = layer.weight_rows(), split = l == 0 && !arch.convolutional() ? std::size_t(arch.image) : rows;
  return {split * r / ranks, r + 1 == ranks ? rows : split * (r + 1) / ranks};
}

template <class T>
void Network<T>::load_example(std::size_t r, const std::uint8_t* pixels, int label) {
  std::copy_n(pixels, arch_.image, pixel_row(r));
  set_label(r, label);
}

template <class T>
void Network<T>::set_label(std::size_t r, int label) {
  labels_[r] = std::uint8_t(label);
  if (!arch_.conditional) return;
  T* onehot = z_in_.data() + r * arch_.dec_in() + arch_.latent;
  for (int c = 0; c < arch_.classes; ++c) onehot[c] = T(c == label ? 1 : 0);
}

template <class T>
void Network<T>::draw_dropout(double p, std::uint64_t key, std::size_t first_row, std::size_t n) {
  const T keep = T(1.0 / (1.0 - p));
  for (std::size_t l = 0; l < mask_.size(); ++l) {
    if (mask_[l].empty()) continue;
    const std::size_t width = mask_[l].size() / max_batch_;
    for (std::size_t r = 0; r < n; ++r) {
      Rng rng(hash_combine(hash_combine(key, l), first_row + r));
      T* m = mask_[l].data() + r * width;
      for (std::size_t u = 0; u < width; ++u) m[u] = rng.uniform() < p ? T(0) : keep;
    }
  }
}

template <class T>
void Network<T>::chain_forward(const Kernels<T>& k, const T* params, std::size_t first, std::size_t last, std::size_t n, Pass pass) {
  for (std::size_t l = first; l < last; ++l) {
    const Stage& s = stages_[l];
    // out [n × s.out] = act(in [n × s.in] · W [s.in × s.out] + b)
    const T* w = params + s.spec->w_offset;
    const T* b = params + s.spec->b_offset;
    if (s.spec->conv) {
      // out [n × out_c × oh × ow] = act(conv(in [n × in_c × ih × iw], W) + b)
      k.conv_forward(*s.spec->conv, s.in, w, b, s.out, n, s.spec->act);
      continue;
    }
    if (s.widened) {
      // in [n × (prev out + classes)] = [prev | the one-hot label columns of the decoder input]
      const std::size_t dec_in = arch_.dec_in(), L = std::size_t(arch_.latent), classes = std::size_t(arch_.classes);
      for (std::size_t r = 0; r < n; ++r) {
        std::copy_n(s.fed + r * s.grad_cols, s.grad_cols, s.in + r * s.ld_in);
        std::copy_n(z_in_.data() + r * dec_in + L, classes, s.in + r * s.ld_in + s.grad_cols);
      }
    }
    if (s.in) k.dense_forward(s.in, s.ld_in, w, b, s.out, n, s.spec->in, s.spec->out, s.spec->act);
    else k.dense_forward_image(images_, w, b, s.out, n, s.spec->out, s.spec->act);
    if (!masked_[l].empty()) {
      // masked [n × out] = out ⊙ mask, or out itself outside training (the slope of the backward pass reads out)
      const std::size_t count = n * s.spec->out;
      T* to = masked_[l].data();
      if (pass == Pass::train) std::transform(s.out, s.out + count, mask_[l].data(), to, std::multiplies<T>());
      else std::copy_n(s.out, count, to);
    }
  }
}

template <class T>
void Network<T>::chain_backward(const Kernels<T>& k, const T* params, T* grads, std::size_t first, std::size_t last, T* d_top,
                                T* d_input, std::size_t d_cols, std::size_t n, BackwardListener* listener) {
  T* dy = d_top;
  int pp = 0;
  const std::size_t rows = ranks_ * n, mine = rank_ * n;  // every rank's rows; where this rank's begin
  for (std::size_t l = last; l-- > first;) {
    const Stage& s = stages_[l];
    // dW [s.in × s.out] = inᵀ · dy,  db [s.out] = Σ dy, over the rows of every rank sharing the pass: this rank's rows
    // [i0, i1) of dW (and db on rank 0), once every rank has written its rows of in and dy.
    if (ranks_ > 1) listener->rows_ready(l);
    const auto [i0, i1] = weight_rows(arch_, *s.spec, l, rank_, ranks_);
    const T* dy_all = dy - mine * s.spec->out;
    T* dw = grads + s.spec->w_offset + i0 * s.spec->row_size();
    T* db = rank_ == 0 ? grads + s.spec->b_offset : nullptr;
    bool finite = true;
    if (s.spec->conv) {
      // dW rows [i0, i1) of W's first dimension, db [out_c], over every rank's rows of in and dy
      finite = k.conv_weight_grad(*s.spec->conv, s.in - mine * s.ld_in, dy_all, dw, db, rows, i0, i1);
    } else if (s.in) {
      finite = k.dense_weight_grad(s.in - mine * s.ld_in + i0, s.ld_in, dy_all, dw, db, rows, i1 - i0, s.spec->out);
    } else {
      // the image columns [i0, i1): pixels from i0, and the label columns when the share reaches past the pixels
      const std::size_t image = std::size_t(arch_.image);
      const ImageBatch part{all_images_.pixels + i0, all_images_.ld, std::min(i1, image) - i0, all_images_.labels,
                            i1 > image ? all_images_.classes : 0};
      finite = k.dense_weight_grad_image(part, dy_all, dw, db, rows, s.spec->out);
    }
    if (listener) listener->layer_done(l, finite);
    if (l == first && !d_input) break;
    const bool inner = l > first;
    const std::size_t cols = inner ? s.grad_cols : d_cols;
    T* dx = inner ? dpp_[pp].data() + mine * cols : d_input;
    pp ^= 1;
    // dx [n × cols] = (dy · Wᵀ) ⊙ act'(prev), for the input columns that need it: prev's (not a widened input's label
    // columns, whose weights come last in W), or the chain input's first d_cols
    if (s.spec->conv) k.conv_input_grad(*s.spec->conv, dy, params + s.spec->w_offset, dx, n, s.in_act, s.prev);
    else k.dense_input_grad(dy, params + s.spec->w_offset, dx, cols, n, cols, s.spec->out, s.in_act, inner ? s.prev : nullptr);
    // dx ⊙= mask of the layer that produced prev, which the training pass masked
    if (inner && train_pass_ && !mask_[l - 1].empty()) std::transform(dx, dx + n * cols, mask_[l - 1].data(), dx, std::multiplies<T>());
    dy = dx;
  }
}

template <class T>
double Network<T>::forward(const Kernels<T>& k, const T* params, std::size_t n, Pass pass) {
  const std::size_t enc_end = enc_end_;
  train_pass_ = pass == Pass::train;
  if (x0_.data())
    for (std::size_t i = 0; i < n * std::size_t(arch_.image); ++i) x0_[i] = T(pixels_[i]) / T(255);
  chain_forward(k, params, 0, enc_end, n, pass);
  // z [n × L] = μ + ε·σ, written into the first L columns of the decoder input
  kl_ = k.reparam_kl_forward(head_.data(), eps_.data(), z_in_.data(), arch_.dec_in(), n, std::size_t(arch_.latent));
  chain_forward(k, params, enc_end, stages_.size(), n, pass);
  return kl_;
}

template <class T>
typename Network<T>::Losses Network<T>::loss(const Kernels<T>& k, std::size_t n, T scale, T beta, std::size_t samples) {
  samples_ = samples;
  // logits [n × 784] against the encoder input's pixel columns (row stride enc_in)
  if (samples != 1 && (samples == 0 || samples > kMaxImportanceSamples || n % samples != 0))
    throw std::logic_error("importance samples: " + std::to_string(n) + " rows are not groups of " + std::to_string(samples));
  const double recon = k.bernoulli_nll(logits_.data(), images_, dlogits_.data(), n, scale, samples == 1 ? nullptr : row_nll_.data());
  if (samples == 1) return {recon, kl_, recon + double(beta) * kl_};
  const std::size_t L = std::size_t(arch_.latent), ldz = arch_.dec_in(), image = std::size_t(arch_.image);
  Losses total;
  for (std::size_t g = 0; g < n; g += samples) {
    // log wₖ = −(NLLₖ + β·(log q − log p)), with log q − log p = Σ_d ½(z² − log σ² − ε²) at z = μ + σε (2π cancels)
    double log_w[kMaxImportanceSamples], top = -std::numeric_limits<double>::infinity();
    for (std::size_t i = 0; i < samples; ++i) {
      const std::size_t r = g + i;
      double kl = 0;
      for (std::size_t j = 0; j < L; ++j) {
        const double z = double(z_in_[r * ldz + j]), lv = double(head_[r * 2 * L + L + j]), e = double(eps_[r * L + j]);
        kl += 0.5 * (z * z - lv - e * e);
      }
      total.recon += row_nll_[r];
      total.kl += kl;
      log_w[i] = -(row_nll_[r] + double(beta) * kl);
      top = std::max(top, log_w[i]);
    }
    double sum = 0;
    for (std::size_t i = 0; i < samples; ++i) sum += std::exp(log_w[i] - top);
    total.objective -= top + std::log(sum / double(samples));
    for (std::size_t i = 0; i < samples; ++i) {
      const T w = T(std::exp(log_w[i] - top) / sum);
      row_weight_[g + i] = w;
      T* d = dlogits_.data() + (g + i) * image;
      std::transform(d, d + image, d, [w](T x) { return x * w; });
    }
  }
  total.recon /= double(samples);
  total.kl /= double(samples);
  return total;
}

template <class T>
void Network<T>::backward(const Kernels<T>& k, const T* params, T* grads, std::size_t n, T scale, T beta, BackwardListener* listener) {
  if (ranks_ > 1 && (n != max_batch_ || !listener))
    throw std::logic_error("a backward pass shared by ranks needs every rank's full batch and a listener to wait on");
  const std::size_t enc_end = enc_end_;
  const std::size_t L = std::size_t(arch_.latent);
  chain_backward(k, params, grads, enc_end, stages_.size(), dlogits_.data(), dz_.data(), L, n, listener);
  if (samples_ == 1) {
    // dhead [n × 2L] from dz [n × L] and β·∂KL
    k.reparam_kl_backward(head_.data(), eps_.data(), dz_.data(), L, dhead_.data(), n, L, scale, beta);
  } else {
    // β·(log q − log p), each row weighted by its wₖ/Σ w: through z, β·z; directly, ∂ log q/∂ log σ² = −½ (μ only moves z)
    const std::size_t ldz = arch_.dec_in();
    for (std::size_t r = 0; r < n; ++r) {
      const T c = scale * beta * row_weight_[r];
      for (std::size_t j = 0; j < L; ++j) dz_[r * L + j] += c * z_in_[r * ldz + j];
    }
    k.reparam_kl_backward(head_.data(), eps_.data(), dz_.data(), L, dhead_.data(), n, L, scale, T(0));
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t j = 0; j < L; ++j) dhead_[r * 2 * L + L + j] -= T(0.5) * scale * beta * row_weight_[r];
  }
  chain_backward(k, params, grads, 0, enc_end, dhead_.data(), nullptr, 0, n, listener);
}

template <class T>
bool Network<T>::rows_finite(std::size_t n) const {
  // each tensor is this rank's [max_batch × width]: its first n·width elements
  auto finite = [&](std::span<const T> t) {
    const std::size_t count = t.size() / max_batch_ * n;
    return std::all_of(t.begin(), t.begin() + std::ptrdiff_t(count), [](T x) { return std::isfinite(x); });
  };
  return std::all_of(hidden_.begin(), hidden_.end(), finite) && finite(z_in_) && finite(dlogits_) && finite(dhead_) && finite(dz_);
}

template <class T>
void Network<T>::decode(const Kernels<T>& k, const T* params, std::size_t n) {
  if (decoder_calls_.empty()) return chain_forward(k, params, enc_end_, stages_.size(), n, Pass::eval);
  const std::size_t first = stages_.size() - decoder_calls_.size();
  for (std::size_t l = 0; l < decoder_calls_.size(); ++l) {
    decoder_calls_[l].w = params + stages_[first + l].spec->w_offset;
    decoder_calls_[l].b = params + stages_[first + l].spec->b_offset;
  }
  k.dense_forward_stack(decoder_calls_, n);
}

namespace {
std::size_t inference_bytes(const Arch& arch, const ParamLayout& layout, const Kernels<float>& k, std::size_t max_batch) {
  return Network<float>::workspace_bytes(arch, layout, max_batch) + round_up(k.workspace_bytes(max_batch, layout.max_dim(), layout.conv_sizes()), kAlign);
}
}  // namespace

InferenceNetwork::InferenceNetwork(const Arch& arch, const ParamLayout& layout, Kernels<float>& k, std::size_t max_batch)
    : arena_(inference_bytes(arch, layout, k, max_batch)), net_(arch, layout, max_batch, arena_) {
  const std::size_t ws = k.workspace_bytes(max_batch, layout.max_dim(), layout.conv_sizes());
  k.bind_workspace(arena_.take<std::byte>(ws), max_batch, layout.max_dim(), layout.conv_sizes());
}

void decode_to_pixels(Network<float>& net, const Kernels<float>& k, const float* params, std::span<const float> inputs, std::size_t n,
                      std::uint8_t* out) {
  const std::span<float> in = net.decoder_input();
  const std::size_t dec_in = in.size() / net.max_batch(), pixels = std::size_t(kImagePixels);
  for (std::size_t first = 0; first < n; first += net.max_batch()) {
    const std::size_t rows = std::min(net.max_batch(), n - first);
    std::copy_n(inputs.data() + first * dec_in, rows * dec_in, in.data());
    net.decode(k, params, rows);
    const std::span<const float> logits = net.logits();
    for (std::size_t i = 0; i < rows * pixels; ++i)
      out[first * pixels + i] = std::uint8_t(std::lround(255.0f / (1.0f + std::exp(-logits[i]))));
  }
}

void Fp32Decoder::decode(const float* inputs, std::size_t n, float* logits) {
  Network<float>& net = inference_.net();
  const std::span<float> in = net.decoder_input();
  const std::size_t dec_in = in.size() / net.max_batch(), pixels = net.logits().size() / net.max_batch();
  for (std::size_t first = 0; first < n; first += net.max_batch()) {
    const std::size_t rows = std::min(net.max_batch(), n - first);
    std::copy_n(inputs + first * dec_in, rows * dec_in, in.data());
    net.decode(k_, params_, rows);
    std::copy_n(net.logits().data(), rows * pixels, logits + first * pixels);
  }
}

void decode_to_pixels(Decoder& decoder, std::span<const float> inputs, std::size_t n, std::uint8_t* out) {
  const std::size_t pixels = std::size_t(kImagePixels), dec_in = n ? inputs.size() / n : 0;
  constexpr std::size_t kChunk = 256;
  std::vector<float> logits(std::min(n, kChunk) * pixels);
  for (std::size_t first = 0; first < n; first += kChunk) {
    const std::size_t rows = std::min(kChunk, n - first);
    decoder.decode(inputs.data() + first * dec_in, rows, logits.data());
    for (std::size_t i = 0; i < rows * pixels; ++i) out[first * pixels + i] = std::uint8_t(std::lround(255.0f / (1.0f + std::exp(-logits[i]))));
  }
}

std::vector<float> decoder_inputs(const Arch& arch, const Kernels<float>& k, std::span<const float> label_weights,
                                  std::span<const std::size_t> noise, double temperature, std::uint64_t key) {
  const std::size_t L = std::size_t(arch.latent), dec_in = arch.dec_in(), classes = std::size_t(arch.classes), n = noise.size();
  std::vector<float> inputs(n * dec_in, 0.0f);
  // Each row draws its own noise row (a row's values depend on its index alone), so any slice of a large request costs
  // only its own rows.
  for (std::size_t i = 0; i < n; ++i) {
    float* row = inputs.data() + i * dec_in;
    k.gaussian_rows(row, 1, L, key, noise[i]);
    for (std::size_t j = 0; j < L; ++j) row[j] *= float(temperature);
    if (arch.conditional) std::copy_n(label_weights.data() + i * classes, classes, row + L);
  }
  return inputs;
}

std::vector<float> digit_decoder_inputs(const Arch& arch, const Kernels<float>& k, std::span<const int> digits, std::size_t per_digit,
                                        double temperature, std::uint64_t key, std::vector<float>* labels) {
  const std::size_t classes = std::size_t(arch.classes), n = digits.size() * per_digit;
  std::vector<float> weights(n * classes, 0.0f);
  std::vector<std::size_t> noise(n);
  for (std::size_t i = 0; i < n; ++i) {
    weights[i * classes + std::size_t(digits[i / per_digit])] = 1.0f;
    // An unconditional model cannot be asked for a digit: every row gets its own noise instead.
    noise[i] = arch.conditional ? i % per_digit : i;
  }
  std::vector<float> inputs = decoder_inputs(arch, k, weights, noise, temperature, key);
  if (labels) *labels = std::move(weights);
  return inputs;
}

std::vector<std::uint8_t> tile_images(const std::uint8_t* images, std::size_t n, std::size_t columns) {
  const std::size_t side = std::size_t(kImageSide), rows = (n + columns - 1) / columns, width = columns * side;
  std::vector<std::uint8_t> grid(rows * side * width);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t p = 0; p < side * side; ++p)
      grid[((i / columns) * side + p / side) * width + (i % columns) * side + p % side] = images[i * side * side + p];
  return grid;
}

template class Network<float>;
template class Network<double>;

}  // namespace vae
