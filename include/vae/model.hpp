// The CVAE: architecture, the flat parameter layout (one buffer, views per layer) and the forward/backward pass.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "vae/aligned.hpp"
#include "vae/idx.hpp"
#include "vae/kernels.hpp"

namespace vae {

struct Arch {
  std::vector<int> hidden;  // encoder dense widths (after the convolutions, if any); the decoder mirrors them
  int latent = 0;
  Activation act = Activation::elu;
  bool conditional = true;  // one-hot label concatenated to encoder input and latent code
  bool label_every_layer = false;  // conditional only: the one-hot also feeds every later decoder layer, not only the first
  int image = kImagePixels;
  int classes = kNumClasses;
  // The encoder's convolutions (empty: an MLP), each 4×4, stride 2, padding 1, halving the image's side, then the activation; the
  // decoder's transposed convolutions mirror them, the last one to a single channel of logits.
  std::vector<int> conv_channels;

  static constexpr std::size_t kConvKernel = 4, kConvStride = 2, kConvPad = 1;

  bool convolutional() const { return !conv_channels.empty(); }
  std::size_t label_width() const { return conditional ? std::size_t(classes) : 0; }
  // The features the first dense layer reads (besides the label): the image, or the last convolution's output flattened.
  std::size_t features() const;
  // The convolutions in forward order: conv_shapes()[i] is encoder convolution i; decoder transposed convolution i
  // is conv_shapes()[n − 1 − i] transposed, from its output channels back to its input.
  std::vector<ConvShape> conv_shapes() const;
  std::size_t enc_in() const { return std::size_t(image) + label_width(); }
  std::size_t dec_in() const { return std::size_t(latent) + label_width(); }
  std::string describe() const;  // "784+10 → 640 → 320 → 2×128 | 128+10 → 320 → 640 → 784, elu"
};

std::string activation_name(Activation a);

// The most draws of z per image that training on the importance-weighted bound takes (--iw-train).
inline constexpr std::size_t kMaxImportanceSamples = 64;

// One layer's place in the flat buffer, W then b, each 64-byte aligned: a dense layer's W [in × out] row-major and b
// [out]; a convolution's W in PyTorch's layout (vae/conv.hpp) and b [out_c]. in and out are the floats of one example's
// input and output either way.
struct LayerSpec {
  std::string name;
  std::size_t in = 0, out = 0;
  Activation act = Activation::identity;
  std::size_t w_offset = 0, b_offset = 0;
  std::optional<ConvShape> conv;

  std::size_t weight_count() const { return conv ? conv->weight_count() : in * out; }
  std::size_t bias_count() const { return conv ? conv->out_c : out; }
  // W's first dimension (what ranks split a weight gradient by) and the floats of each of its rows
  std::size_t weight_rows() const { return conv ? conv->weight_rows() : in; }
  std::size_t row_size() const { return conv ? conv->weight_row_size() : out; }
  // PyTorch's fan-in of W, which its default initialisation scales by: in, or W's dimension 1 times k²
  std::size_t fan_in() const { return conv ? conv->weight_row_size() : in; }
  std::vector<std::size_t> weight_dims() const;  // [in, out], or [W0, W1, k, k]
};

// Layers in forward order (enc.0 … enc.head, dec.0 … dec.out); offsets are assigned in backward order, so the
// gradients that the backward pass finishes first sit at the start of the buffer.
class ParamLayout {
 public:
  explicit ParamLayout(const Arch& arch);
  const std::vector<LayerSpec>& layers() const { return layers_; }
  std::size_t encoder_layers() const { return encoder_layers_; }  // enc.0 … enc.head
  std::size_t padded_size() const { return padded_; }             // floats in each flat buffer
  std::size_t parameter_count() const { return count_; }          // exact, without padding
  std::size_t max_dim() const;                                    // widest dense layer input or output
  ConvSizes conv_sizes() const;                                   // what the convolutions' scratch must hold

 private:
  std::vector<LayerSpec> layers_;
  std::size_t encoder_layers_ = 0;
  std::size_t padded_ = 0;
  std::size_t count_ = 0;
};

// The bf16 weight copy of a model for kernels k (vae/kernels.hpp's WeightCopy): the u32 words it takes (0: k keeps
// none), and its table over params and words, each layer's panels 64-byte aligned.
std::size_t weight_copy_words(const ParamLayout& layout, const Kernels<float>& k);
WeightCopy make_weight_copy(const ParamLayout& layout, const Kernels<float>& k, const float* params, std::uint32_t* words);

// PyTorch's nn.Linear default: W and b uniform in ±1/√in, drawn from (seed, layer) so every rank agrees.
template <class T>
void init_parameters(const ParamLayout& layout, std::uint64_t seed, std::span<T> params);

// Told by the backward pass when a layer's weight and bias gradients are final (layers in backward order), so gradient
// synchronisation can start while the rest of the backward pass runs.
class BackwardListener {
 public:
  // finite: every element of the layer's weight and bias gradients is finite (no NaN, no ±Inf)
  virtual void layer_done(std::size_t layer, bool finite) = 0;
  // Ranks sharing a backward pass (RowShare): return once every rank has written its rows of the layer's input and output
  // gradient, which the layer's weight gradient reads.
  virtual void rows_ready(std::size_t layer) = 0;

 protected:
  ~BackwardListener() = default;
};

// The ranks of one node sharing one backward pass. The tensors a weight gradient reads (each layer's input and output
// gradient, the image batch) are [ranks·max_batch × width] in `arena`, the node's shared memory carved alike on every rank,
// with this rank's rows from rank·max_batch; each rank then computes its share of the rows of every weight gradient from
// all ranks' rows, so the gradient of the global batch is formed once, summed over rows inside the product, and never
// summed across ranks. ranks = 1 (no arena): a network of its own.
struct RowShare {
  Arena* arena = nullptr;
  std::size_t rank = 0, ranks = 1;
};

template <class T>
class Network {
 public:
  // With importance samples (loss's `samples` K > 1), recon and kl are over images, each the mean of its K samples, and
  // kl is the Monte Carlo estimate log q(z|x,y) − log p(z) at the drawn z rather than the closed form.
  struct Losses {
    double recon = 0;      // Σ Bernoulli NLL over the batch, nats
    double kl = 0;         // Σ KL(q(z|x,y) ‖ N(0, I)) over the batch, nats
    double objective = 0;  // Σ over images of what backward differentiates: recon + β·KL, or −log (1/K) Σₖ wₖ
  };
  // train: with dropout, each dropped layer's output is multiplied by its mask; eval: every unit kept, nothing scaled.
  enum class Pass { eval, train };

  // With bf16_for (kernels with bf16 products), the tensors that products both write and read get bf16 shadows
  // (Bf16Shadow), beside them in the same arena; bf16_shadows() lists them for the kernels to bind. With dropout, the
  // output of every hidden dense layer (the Arch::hidden widths, encoder and decoder) gets a mask and a masked copy, which
  // the next layer reads in a training pass; such a network keeps no shadows (a mask would leave them stale).
  Network(const Arch& arch, const ParamLayout& layout, std::size_t max_batch, Arena& arena, const RowShare& share = {},
          const Kernels<T>* bf16_for = nullptr, bool dropout = false);

  // Bytes of arena this network takes for max_batch rows (the exact figure, as the arena rounds each buffer to 64 bytes).
  static std::size_t workspace_bytes(const Arch& arch, const ParamLayout& layout, std::size_t max_batch, const Kernels<T>* bf16_for = nullptr,
                                     bool dropout = false);
  // For `ranks` networks of max_batch rows sharing a pass: the bytes each takes of its own arena, and of the shared one.
  static std::pair<std::size_t, std::size_t> arena_bytes(const Arch& arch, const ParamLayout& layout, std::size_t max_batch,
                                                         std::size_t ranks, const Kernels<T>* bf16_for = nullptr, bool dropout = false);
  // Whether layer l (forward order) is one whose output dropout masks: a hidden dense layer of the encoder or decoder.
  static bool dropped_layer(const Arch& arch, const ParamLayout& layout, std::size_t l);
  // The rows [first, last) of layer l's weight gradient that rank r of `ranks` computes: the input units split evenly
  // (the first layer's pixels split, its label units with the last rank, so each share is one image column range).
  static std::pair<std::size_t, std::size_t> weight_rows(const Arch& arch, const LayerSpec& layer, std::size_t l, std::size_t r,
                                                         std::size_t ranks);

  // Writes one example into row r: its pixels (uint8, converted inside the first layer's packing) and label, and the
  // label's one-hot into the decoder input.
  void load_example(std::size_t r, const std::uint8_t* pixels, int label);
  // The same for a caller that gathers a batch's pixels itself: row r's pixels [784] (rows image() apart), and its label.
  std::uint8_t* pixel_row(std::size_t r) { return pixels_.data() + r * std::size_t(arch_.image); }
  void set_label(std::size_t r, int label);
  const ImageBatch& images() const { return images_; }
  std::span<T> eps() { return eps_; }          // [max_batch × latent], filled by the caller before forward()
  std::span<const T> logits() const { return logits_; }  // [max_batch × 784]
  std::span<const T> head() const { return head_; }       // [max_batch × 2·latent] = [μ | log σ²]
  std::span<T> decoder_input() { return z_in_; }          // [max_batch × dec_in]
  std::size_t max_batch() const { return max_batch_; }

  // Dropout masks for rows [0, n), whose global-batch positions start at first_row: unit u of row r of dropped layer l is
  // kept (scaled by 1/(1 − p)) or zeroed (with probability p) as (key, l, first_row + r, u) decide, so a sample's masks
  // do not depend on which rank holds it. Nothing to do for a network made without dropout.
  void draw_dropout(double p, std::uint64_t key, std::size_t first_row, std::size_t n);
  // forward: encoder, reparameterisation, decoder, for rows [0, n). Returns Σ KL.
  double forward(const Kernels<T>& k, const T* params, std::size_t n, Pass pass = Pass::eval);
  // loss: Σ reconstruction NLL; writes dlogits = scale·∂/∂logits (scale = 1/global batch averages over ranks).
  // samples K > 1: rows come in groups of K, one image's K draws of z, and the objective is the importance-weighted bound
  // of Burda et al. (2015), −log (1/K) Σₖ wₖ with log wₖ = log p(x|zₖ) − β·(log q(zₖ|x) − log p(zₖ)); its gradient is each
  // draw's −log wₖ gradient times wₖ/Σ w, which loss writes into dlogits and backward applies to the latent terms.
  Losses loss(const Kernels<T>& k, std::size_t n, T scale, T beta = T(1), std::size_t samples = 1);
  // backward: gradients of scale·(recon + beta·KL) into grads (overwritten, same layout as params); the listener, if any,
  // hears of each layer as its gradients are done. Ranks sharing the pass each write only their rows of every weight
  // gradient (weight_rows; rank 0 the biases) into the one gradient buffer of the node, and need n = max_batch.
  void backward(const Kernels<T>& k, const T* params, T* grads, std::size_t n, T scale, T beta, BackwardListener* listener = nullptr);
  // Whether rows [0, n) of every layer's output, the decoder input and the loss gradients are finite (a diagnosis, not
  // for every step).
  bool rows_finite(std::size_t n) const;
  // decode: decoder only, from decoder_input() rows [0, n) to logits.
  void decode(const Kernels<T>& k, const T* params, std::size_t n);
  // Layer l's output (layers in forward order), [max_batch × out]: what INT8 calibration measures.
  std::span<const T> layer_output(std::size_t l) const { return hidden_[l]; }
  std::span<const Bf16Shadow<T>> bf16_shadows() const { return shadows_; }
  // Layer l's dropout mask [max_batch × out] as last drawn (empty: the layer is not dropped).
  std::span<const T> dropout_mask(std::size_t l) const { return mask_[l]; }

 private:
  struct Stage {
    const LayerSpec* spec;
    T* in;               // nullptr for an MLP's first encoder layer, whose input is the uint8 image batch
    std::size_t ld_in;
    Activation in_act;   // activation that produced `prev` (identity for a network input)
    T* out;
    const T* prev;       // the previous layer's output [n × grad_cols] (nullptr for a network input)
    const T* fed;        // prev as this layer reads it: its masked copy, if dropout masks the previous layer
    std::size_t grad_cols;  // input columns that need a gradient: prev's width, or the latent columns of z
    bool widened;        // in = [prev | one-hot label], assembled before the layer runs
  };
  void chain_forward(const Kernels<T>& k, const T* params, std::size_t first, std::size_t last, std::size_t n, Pass pass);
  void chain_backward(const Kernels<T>& k, const T* params, T* grads, std::size_t first, std::size_t last, T* d_top, T* d_input,
                      std::size_t d_cols, std::size_t n, BackwardListener* listener);

  Arch arch_;
  std::size_t max_batch_;
  std::size_t rank_ = 0, ranks_ = 1;
  std::vector<Stage> stages_;  // one per layer, forward order
  std::size_t enc_end_ = 0;    // stages [0, enc_end_) are the encoder
  std::vector<DenseCall<T>> decoder_calls_;  // the decoder's layers for dense_forward_stack (empty with widened inputs)
  std::span<std::uint8_t> pixels_;  // [B × 784], this rank's rows of the shared [ranks·B × 784]
  std::span<std::uint8_t> labels_;  // [B]
  ImageBatch all_images_;           // every rank's rows, [ranks·B × enc_in]
  ImageBatch images_;               // the encoder input: pixels/255 and one-hot labels, [B × enc_in]
  std::span<T> x0_;                 // a convolutional encoder's input, pixels/255 as floats [B × 1 × 28 × 28], this rank's rows
  std::vector<std::span<T>> hidden_;  // each layer's output, [B × out]
  std::vector<std::span<T>> wide_;    // with label_every_layer, a decoder layer's input [B × (prev out + classes)]
  std::span<T> head_;          // [B × 2L]
  std::span<T> eps_;           // [B × L]
  std::span<T> z_in_;          // [B × dec_in]
  std::span<T> logits_;        // [B × 784]
  std::span<T> dlogits_;       // [B × 784]
  std::span<T> dhead_;         // [B × 2L]
  std::span<T> dz_;            // [B × L], the gradient of z only (the label columns of the decoder input need none)
  std::span<T> dpp_[2];        // ping-pong gradients of hidden layers, [ranks·B × max_hidden]; this rank's rows start at
                               // rank·B·width for a layer `width` wide
  std::vector<Bf16Shadow<T>> shadows_;  // every layer output a product reads, and every inner input gradient
  std::vector<std::span<T>> mask_;      // a dropped layer's mask [B × out]: 0 or 1/(1 − p) (empty: not dropped)
  std::vector<std::span<T>> masked_;    // its output as the next layer reads it [B × out], this rank's rows of every rank's
  bool train_pass_ = false;             // the last forward pass applied the masks, so backward applies them too
  std::span<double> row_nll_;           // [B], each row's Bernoulli NLL (importance samples only)
  std::span<T> row_weight_;             // [B], each row's normalised importance weight wₖ/Σ w within its image's group
  std::size_t samples_ = 1;             // the last loss's K, so backward weights the latent terms alike
  double kl_ = 0;
};

// A network for use outside the trainer (tools, evaluation), with its own arena for the activations and the kernels'
// scratch, which it binds to k: one InferenceNetwork per Kernels object at a time.
class InferenceNetwork {
 public:
  InferenceNetwork(const Arch& arch, const ParamLayout& layout, Kernels<float>& k, std::size_t max_batch);
  Network<float>& net() { return net_; }

 private:
  Arena arena_;
  Network<float> net_;
};

// Decoder inputs to logits as a tool runs them, chosen at start-up: the fp32 network (Fp32Decoder) or the INT8 one
// (vae/quantized.hpp).
class Decoder {
 public:
  virtual ~Decoder() = default;
  // logits [n × image] of inputs [n × dec_in], for any n
  virtual void decode(const float* inputs, std::size_t n, float* logits) = 0;
};

class Fp32Decoder final : public Decoder {
 public:
  Fp32Decoder(const Arch& arch, const ParamLayout& layout, const float* params, Kernels<float>& k, std::size_t max_batch)
      : k_(k), params_(params), inference_(arch, layout, k, max_batch) {}
  void decode(const float* inputs, std::size_t n, float* logits) override;

 private:
  Kernels<float>& k_;
  const float* params_;
  InferenceNetwork inference_;
};

// A pixel's mean σ(logit), computed alike by every tool and port (the page's pixels are compared with these).
inline float pixel_probability(float logit) { return 1.0f / (1.0f + std::exp(-logit)); }

// Decoder means as grey levels (0 black … 255 white): `inputs` [n × dec_in] (z, then the label weights) through the
// decoder in batches of the network's size, into out [n × 784].
void decode_to_pixels(Network<float>& net, const Kernels<float>& k, const float* params, std::span<const float> inputs, std::size_t n,
                      std::uint8_t* out);
// The same through any decoder.
void decode_to_pixels(Decoder& decoder, std::span<const float> inputs, std::size_t n, std::uint8_t* out);

// Decoder input rows [n × dec_in]: row i is z_noise[i] (row noise[i] of standard normals drawn from key, times temperature)
// followed by the label weights [n × classes] of row i (one-hot, or a mix of digits; ignored by an unconditional model).
std::vector<float> decoder_inputs(const Arch& arch, const Kernels<float>& k, std::span<const float> label_weights,
                                  std::span<const std::size_t> noise, double temperature, std::uint64_t key);

// Decoder inputs for per_digit samples of each of digits, digit-major: row d·per_digit + i is z_i followed by the digit's
// one-hot, so sample i of every digit shares its noise (an unconditional model's rows each have their own z). labels, if
// given, receives the one-hots [n × classes].                                                    [digits·per_digit × dec_in]
std::vector<float> digit_decoder_inputs(const Arch& arch, const Kernels<float>& k, std::span<const int> digits, std::size_t per_digit,
                                        double temperature, std::uint64_t key, std::vector<float>* labels = nullptr);

// All ten digits, 0 to 9.
inline constexpr int kAllDigits[kNumClasses] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
// The model's classes 0 … classes − 1, one grid row each.
inline std::span<const int> all_classes(const Arch& arch) { return std::span<const int>(kAllDigits).first(std::size_t(arch.classes)); }

// Tiles n images of 28 × 28 into a grid `columns` wide, row by row: [rows·28 × columns·28].
std::vector<std::uint8_t> tile_images(const std::uint8_t* images, std::size_t n, std::size_t columns);

extern template class Network<float>;
extern template class Network<double>;

}  // namespace vae
