#include "model/model.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

#include "core/error.h"
#include "core/text.h"

namespace borealis {
namespace {

// The backend reads the matmuls' weights from their bf16 copy for a scope
// (Bf16Inputs::use_weight_copy; nothing without a copy).
template <typename T>
class WeightCopyInUse {
 public:
  WeightCopyInUse(Backend<T>& backend, const T* params, std::uint16_t* copy, std::int64_t count,
                  bool round)
      : h_(copy != nullptr ? backend.bf16_inputs() : nullptr) {
    if (h_ != nullptr) h_->use_weight_copy(params, copy, count, round);
  }
  ~WeightCopyInUse() {
    if (h_ == nullptr) return;
    try {
      h_->use_weight_copy(nullptr, nullptr, 0, false);
    } catch (...) {  // (the backend's error comes back with its next op)
    }
  }
  WeightCopyInUse(const WeightCopyInUse&) = delete;
  WeightCopyInUse& operator=(const WeightCopyInUse&) = delete;

 private:
  Bf16Inputs<T>* h_;
};

}  // namespace

template <typename T>
Model<T>::Model(const ModelConfig& config, Backend<T>& backend, const TensorParallelGroup<T>* group,
                PipelineStage stage)
    : config_(config),
      backend_(backend),
      group_(group != nullptr && group->active() ? group : nullptr),
      sequence_(group_ != nullptr && group_->sequence()),
      vocab_part_(config.padded_vocab / (group_ ? group_->split.size : 1)),
      vocab_first_(group_ ? group_->split.rank * vocab_part_ : 0),
      layout_((config.validate(), config), group_ ? group_->split : TensorSplit{}, stage),
      block_(config, layout_, backend, group_) {
  // The parallel groups exchange host buffers (MPI).
  if (!backend.host_memory() && (group_ != nullptr || !stage.first() || !stage.last())) {
    throw Error(fmt::format("tensor and pipeline parallelism run on the CPU backend only, not on "
                            "'{}'",
                            backend.name()),
                "backend");
  }
  const std::int64_t total = layout_.total();
  // With bf16 matmul inputs, the weights' bf16 copy too.
  const bool copy = backend.bf16_inputs() != nullptr && group_ == nullptr;
  const std::uint64_t bytes = static_cast<std::uint64_t>(total) * (2 * sizeof(T) + (copy ? 2 : 0));
  allocate_for(fmt::format("the parameters{} ({} parameters) need {}",
                           copy ? ", their gradients and their bf16 copy" : " and their gradients",
                           total, format_bytes(bytes)),
               "", [&] {
                 params_ = BackendArray<T>(backend, total);
                 grads_ = BackendArray<T>(backend, total);
                 if (copy) params16_ = BackendArray<std::uint16_t>(backend, total);
               });
}

template <typename T>
std::span<T> Model<T>::param(std::string_view name) {
  const ParamView& v = layout_.find(name);
  return {params_.data() + v.offset, static_cast<std::size_t>(v.size)};
}

template <typename T>
std::span<T> Model<T>::grad(std::string_view name) {
  const ParamView& v = layout_.find(name);
  return {grads_.data() + v.offset, static_cast<std::size_t>(v.size)};
}

template <typename T>
Model<T>::ParamsHeld::ParamsHeld(Model& model) : model_(model) {
  if (model_.params_held_) throw std::logic_error("Model::hold_params: already held");
  model_.params_held_ = true;
  model_.copy_current_ = false;
}

template <typename T>
Model<T>::ParamsHeld::~ParamsHeld() {
  model_.params_held_ = false;
  model_.copy_current_ = false;
}

template <typename T>
void Model<T>::init(std::uint64_t seed) {
  copy_current_ = false;
  if (backend_.host_memory()) {
    init_params(config_, layout_, params_.data(), seed);
    return;
  }
  std::vector<T> host(static_cast<std::size_t>(layout_.total()));
  init_params(config_, layout_, host.data(), seed);
  backend_.upload(params_.data(), host.data(), host.size() * sizeof(T));
}

template <typename T>
void Model<T>::zero_grad() {
  backend_.fill(grads_.data(), T(0), grads_.size());
}

template <typename T>
void Model<T>::reserve(int B, int seq, int slots) {
  if (B <= 0) throw Error(fmt::format("batch size must be positive, got {}", B), "batch");
  if (seq <= 0 || seq > config_.max_seq) {
    throw Error(fmt::format("sequence length {} is outside 1..{} (the model's max_seq)", seq,
                            config_.max_seq),
                "sequence");
  }
  if (slots <= 0)
    throw Error(fmt::format("activation slots must be positive, got {}", slots), "slots");
  if (B <= cap_B_ && seq <= cap_T_ && slots <= slots_) return;
  if (std::ranges::find(grad_pending_, 1) != grad_pending_.end()) {
    throw std::logic_error("Model::reserve would move activations that wait for their backward");
  }
  B = std::max(B, cap_B_);
  seq = std::max(seq, cap_T_);
  slots = std::max(slots, cap_B_ > 0 ? slots_ : 1);
  const std::int64_t N = static_cast<std::int64_t>(B) * seq;
  const BlockDims& d = block_.dims();
  const std::int64_t C = d.C;
  const std::int64_t S = d.S;
  const std::int64_t F = d.F;
  const std::int64_t FW = d.FW;
  const bool last = stage().last();
  // Rows of the residual stream and the norms this rank holds: all, or its
  // share under sequence parallelism.
  const std::int64_t n = sequence_ ? (N + group_->split.size - 1) / group_->split.size : N;
  // Buffers are taken in order, each aligned to a multiple of `unit`
  // elements: in arena_ (take: 16, 64 bytes in float), and with bf16 matmul
  // inputs in arena16_ too (take16: 32, 64 bytes), planned alike.
  std::int64_t top = 0, top16 = 0;
  auto bump = [](std::int64_t& end, std::int64_t elems, std::int64_t unit) {
    const std::int64_t at = end;
    end += (elems + unit - 1) / unit * unit;
    return at;
  };
  auto take = [&](std::int64_t elems) { return bump(top, elems, 16); };
  auto take16 = [&](std::int64_t elems) { return bump(top16, elems, 32); };
  // With bf16 matmul inputs the norms' outputs, the MLP's pre-activation and
  // its activation are kept in bf16 only: their fp32 offsets are -1.
  const bool bf16 = backend_.bf16_inputs() != nullptr && group_ == nullptr;
  // A matmul input: an fp32 buffer, or (offset -1) a bf16 one.
  auto take_input = [&](std::int64_t elems, std::int64_t& offset16) {
    offset16 = bf16 ? take16(elems) : -1;
    return bf16 ? std::int64_t{-1} : take(elems);
  };
  // qkv in bf16 where attention reads it so (a shape on its tensor-core
  // kernels): GPT-2's qkv GEMM writes it, Llama's RoPE from the GEMM's fp32
  // output in scratch.
  const bool bf16_qkv =
      bf16 && backend_.bf16_inputs()->attention_reads_bf16_qkv(B, d.NH, d.NKV, d.HD);
  // One activation set: what a micro-batch keeps from its forward to its
  // backward.
  encoded_ = take(n * C);  // the embedding, or the previous stage's output
  layer_acts_.clear();
  for (int l = layout_.first_layer(); l < layout_.end_layer(); ++l) {
    LayerActs a{};
    a.ln1 = take_input(n * C, a.ln1_bf16);
    a.ln1_mean = take(n);
    a.ln1_rstd = take(n);
    a.qkv = bf16_qkv ? -1 : take(N * S);
    a.qkv_bf16 = bf16_qkv ? take16(N * S) : -1;
    // The attention output: in fp32 and (the projection's input) bf16, or
    // with qkv in bf16 in bf16 only (attention's backward reads it so).
    a.atty = bf16_qkv ? -1 : take(N * d.A);
    a.atty_bf16 = bf16 ? take16(N * d.A) : -1;
    a.lse = take(static_cast<std::int64_t>(B) * d.NH * seq);
    a.res2 = take(n * C);
    a.ln2 = take_input(n * C, a.ln2_bf16);
    a.ln2_mean = take(n);
    a.ln2_rstd = take(n);
    a.fch = take_input(N * FW, a.fch_bf16);
    a.res3 = take(n * C);
    layer_acts_.push_back(a);
  }
  if (last) {
    lnf_ = take_input(n * C, lnf_bf16_);
    lnf_mean_ = take(n);
    lnf_rstd_ = take(n);
    losses_ = take(N);
  }
  slot_elems_ = top;
  slot16_elems_ = top16;
  // Scratch shared by all sets.
  top = 0;
  top16 = 0;
  if (sequence_) {
    // Gathered norm outputs (the final norm's too, for the loss head), the
    // partial sums of row-parallel projections, and the gradients' forms.
    gathered_ = take(N * C);
    partial_ = take(N * C);
    dgathered_ = take(N * C);
    dlocal_ = take(n * C);
    dnorm_ = take(2 * C);
  }
  if (last) {
    if (chunk_rows_request_ > 0) {
      chunk_rows_ = std::min<std::int64_t>(chunk_rows_request_, N);
    } else {
      // Equal chunks (rounded up to 16 rows, the GEMM kernels' unroll): a
      // small remainder chunk runs its GEMMs far below the sgemm peak.
      const std::int64_t most =
          std::clamp<std::int64_t>(backend_.loss_chunk_elems() / vocab_part_, 16, N);
      const std::int64_t chunks = (N + most - 1) / most;
      chunk_rows_ = std::min<std::int64_t>(N, ((N + chunks - 1) / chunks + 15) / 16 * 16);
    }
    // With bf16 matmul inputs the logits are kept in bf16, and their
    // gradient (a bf16 matmul input) over them.
    logits_ = bf16 ? -1 : take(chunk_rows_ * vocab_part_);
    logits_bf16_ = bf16 ? take16(chunk_rows_ * vocab_part_) : -1;
    row_max_ = take(chunk_rows_);
    row_sums_ = take(2 * chunk_rows_);
    dlnf_ = take(N * C);
  }
  // The MLP activation (recomputed in backward rather than stored per
  // layer) and the gradients of one block.
  mlp_act_ = take_input(N * F, mlp_bf16_);
  qkv_f32_ = bf16_qkv && !d.gpt2 ? take(N * S) : -1;
  dres_ = take(n * C);
  // With bf16 matmul inputs, its bf16 form for the GEMMs, written by the
  // norms' backward.
  dres_bf16_ = bf16 ? take16(n * C) : -1;
  dln_ = take(N * C);
  datty_ = bf16_qkv ? -1 : take(N * d.A);
  datty_bf16_ = bf16_qkv ? take16(N * d.A) : -1;
  // dqkv in bf16 for the qkv GEMMs: written so, where attention runs on its
  // tensor-core kernels (qkv in bf16), by attention's backward itself (with
  // RoPE's, in Llama), which then has no fp32 dqkv; else by RoPE's backward
  // from attention's fp32 gradient (Llama).
  const bool bf16_dqkv = bf16 && (!d.gpt2 || bf16_qkv);
  dqkv_ = bf16_qkv ? -1 : take(N * S);
  dmlp_act_ = take(N * F);
  // With bf16 matmul inputs the MLP's gradient at its pre-activation is kept
  // in bf16 (dfch only so).
  dqkv_bf16_ = bf16_dqkv ? take16(N * S) : -1;
  dfch_ = take_input(N * FW, dfch_bf16_);
  // The old buffers go first (nothing in them is needed), and should the
  // new ones not fit, nothing is reserved: the next reserve plans again.
  arena_ = {};
  arena16_ = {};
  tokens_ = {};
  targets_ = {};
  cap_B_ = cap_T_ = 0;
  const std::int64_t elems = slots * slot_elems_ + top;
  const std::int64_t elems16 = bf16 ? slots * slot16_elems_ + top16 : 0;
  const bool host_targets = !backend_.host_memory() && last;
  const std::uint64_t bytes = static_cast<std::uint64_t>(elems) * sizeof(T) +
                              static_cast<std::uint64_t>(elems16) * 2 +
                              static_cast<std::uint64_t>(slots + host_targets) * N * 4;
  allocate_for(fmt::format("the activations of {} sequences of {} tokens{} need {}", B, seq,
                           slots > 1 ? fmt::format(" ({} micro-batches in flight)", slots) : "",
                           format_bytes(bytes)),
               "fewer sequences per micro-batch take less", [&] {
                 arena_ = BackendArray<T>(backend_, elems);
                 arena16_ = BackendArray<std::uint16_t>(backend_, elems16);
                 tokens_ = BackendArray<std::int32_t>(backend_, slots * N);
                 if (host_targets) targets_ = BackendArray<std::int32_t>(backend_, N);
               });
  grad_pending_.assign(static_cast<std::size_t>(slots), 0);
  head_slot_ = -1;
  cap_B_ = B;
  cap_T_ = seq;
  slots_ = slots;
  slot_ = std::min(slot_, slots - 1);
}

template <typename T>
void Model<T>::use_slot(int slot) {
  if (slot < 0 || slot >= slots_ || cap_B_ == 0) {
    throw std::logic_error(fmt::format("Model::use_slot({}) outside the {} reserved slots", slot,
                                       cap_B_ == 0 ? 0 : slots_));
  }
  slot_ = slot;
}

template <typename T>
void Model<T>::require_stage(bool ok, const char* what) const {
  if (!ok) {
    throw std::logic_error(
        fmt::format("Model::{} on pipeline stage {} of {}", what, stage().stage, stage().stages));
  }
  if (cap_B_ == 0) throw std::logic_error(fmt::format("Model::{} before reserve()", what));
}

template <typename T>
T* Model<T>::stage_input() {
  require_stage(!stage().first(), "stage_input");
  return act(encoded_);
}

template <typename T>
const T* Model<T>::stage_output() {
  require_stage(!stage().last(), "stage_output");
  return res_in(layout_.end_layer());
}

template <typename T>
T* Model<T>::output_grad() {
  require_stage(!stage().last(), "output_grad");
  return tmp(dres_);
}

template <typename T>
const T* Model<T>::input_grad() {
  require_stage(!stage().first(), "input_grad");
  return tmp(dres_);
}

template <typename T>
std::int64_t Model<T>::stage_elems(int B, int seq) const {
  return rows_of(B, seq) * config_.d_model;
}

template <typename T>
void Model<T>::set_loss_chunk_rows(int rows) {
  if (rows <= 0) throw Error("loss chunk rows must be positive", "loss head");
  if (std::ranges::find(grad_pending_, 1) != grad_pending_.end()) {
    throw std::logic_error("Model::set_loss_chunk_rows while activations wait for their backward");
  }
  chunk_rows_request_ = rows;
  cap_B_ = cap_T_ = 0;  // re-plan the arena on the next reserve()
}

template <typename T>
T* Model<T>::res_in(int l) {
  const int first = layout_.first_layer();
  return act(l == first ? encoded_ : layer_acts_[static_cast<std::size_t>(l - 1 - first)].res3);
}

template <typename T>
BlockBuffers<T> Model<T>::buffers(int l) {
  const LayerActs& a = layer_acts_[static_cast<std::size_t>(l - layout_.first_layer())];
  BlockBuffers<T> b{act(a.ln1),      act(a.ln1_mean), act(a.ln1_rstd), act(a.qkv),
                    act(a.atty),     act(a.res2),     act(a.ln2),      act(a.ln2_mean),
                    act(a.ln2_rstd), act(a.fch),      tmp(mlp_act_),   act(a.res3)};
  if (sequence_) {
    b.gathered = tmp(gathered_);
    b.partial = tmp(partial_);
  }
  b.ln1_bf16 = act16(a.ln1_bf16);
  b.ln2_bf16 = act16(a.ln2_bf16);
  b.mlp_bf16 = tmp16(mlp_bf16_);
  b.atty_bf16 = act16(a.atty_bf16);
  b.qkv_bf16 = act16(a.qkv_bf16);
  b.fch_bf16 = act16(a.fch_bf16);
  if (b.qkv_bf16 != nullptr) b.qkv = tmp(qkv_f32_);
  return b;
}

template <typename T>
void Model<T>::validate_tokens(const std::int32_t* ids, const char* what) const {
  const int N = B_ * T_;
  for (int i = 0; i < N; ++i) {
    if (ids[i] < 0 || ids[i] >= config_.vocab_size) {
      throw Error(fmt::format("token id {} at position {} is outside the vocabulary [0, {})",
                              ids[i], i, config_.vocab_size),
                  what);
    }
  }
}

template <typename T>
T Model<T>::forward(const std::int32_t* tokens, const std::int32_t* targets, int B, int seq,
                    bool need_grad, T grad_scale) {
  const bool first = stage().first();
  const bool last = stage().last();
  if ((first && tokens == nullptr) || (last && targets == nullptr)) {
    throw std::invalid_argument("Model::forward needs tokens (first stage) and targets (last)");
  }
  if (sequence_ && (static_cast<std::int64_t>(B) * seq) % group_->split.size != 0) {
    throw Error(fmt::format("sequence parallelism needs the batch's {} x {} rows to divide into "
                            "the {} ranks of the tensor group",
                            B, seq, group_->split.size),
                "sequence");
  }
  for (int s = 0; s < static_cast<int>(grad_pending_.size()); ++s) {
    if (s != slot_ && grad_pending_[static_cast<std::size_t>(s)] && (B != B_ || seq != T_)) {
      throw std::logic_error("Model::forward: micro-batches in flight must have the same shape");
    }
  }
  reserve(B, seq);
  B_ = B;
  T_ = seq;
  const int N = B * seq;
  const BlockDims& d = block_.dims();
  const int C = d.C;
  if (first) validate_tokens(tokens, "tokens");
  if (last) validate_tokens(targets, "targets");
  grad_pending_[static_cast<std::size_t>(slot_)] = 0;
  if (head_slot_ == slot_) head_slot_ = -1;
  // The matmuls read the weights from one bf16 copy, rounded now (or, with
  // the parameters held, at the first forward since they were).
  const WeightCopyInUse<T> weights(backend_, params_.data(), params16_.data(), params16_.size(),
                                   !copy_current_);
  copy_current_ = params_held_;

  // The ops read the backend's copies of the tokens and targets.
  if (first) {
    std::int32_t* copy = tokens_.data() + static_cast<std::ptrdiff_t>(slot_) * N;
    backend_.upload(copy, tokens, static_cast<std::size_t>(N) * sizeof(std::int32_t));
    tokens = copy;
  }
  if (last && !backend_.host_memory()) {
    backend_.upload(targets_.data(), targets, static_cast<std::size_t>(N) * sizeof(std::int32_t));
    targets = targets_.data();
  }
  if (first && group_ == nullptr) {
    backend_.embedding_forward(act(encoded_), tokens, p(layout_.wte()),
                               d.gpt2 ? p(layout_.wpe()) : nullptr, N, seq, C);
  } else if (first) {
    // Each rank embeds the tokens of its vocabulary rows (rank 0 adds the
    // positions); the group's sum is the whole embedding (of this rank's
    // rows under sequence parallelism).
    T* out = sequence_ ? tmp(partial_) : act(encoded_);
    backend_.embedding_forward_part(out, tokens, p(layout_.wte()), vocab_first_, vocab_part_,
                                    d.gpt2 && group_->split.rank == 0 ? p(layout_.wpe()) : nullptr,
                                    N, seq, C);
    if (sequence_) {
      group_->reduce_scatter(out, act(encoded_), local_rows() * C);
    } else {
      group_->sum(out, static_cast<std::int64_t>(N) * C);
    }
  }
  for (int l = layout_.first_layer(); l < layout_.end_layer(); ++l) {
    T* lse = act(layer_acts_[static_cast<std::size_t>(l - layout_.first_layer())].lse);
    const BlockBuffers<T> buf = buffers(l);
    const Attend<T> attend = [&](T* qkv, T* atty) {
      if (buf.qkv_bf16 != nullptr) {
        Bf16Inputs<T>* h = backend_.bf16_inputs();
        if (!d.gpt2) {
          h->rope_forward(buf.qkv_bf16, qkv, B, seq, d.NH, d.NKV, d.HD, config_.rope_theta);
        }
        h->attention_forward(atty, buf.atty_bf16, lse, buf.qkv_bf16, B, seq, d.NH, d.NKV, d.HD);
        return;
      }
      if (!d.gpt2) backend_.rope_forward(qkv, B, seq, d.NH, d.NKV, d.HD, config_.rope_theta);
      if (buf.atty_bf16 != nullptr) {
        backend_.bf16_inputs()->attention_forward(atty, buf.atty_bf16, lse, qkv, B, seq, d.NH,
                                                  d.NKV, d.HD);
      } else {
        backend_.attention_forward(atty, lse, qkv, B, seq, d.NH, d.NKV, d.HD);
      }
    };
    const RowGroup all{0, N, false};
    block_.forward(l, params_.data(), res_in(l), buf, N, attend, std::span(&all, 1));
  }
  if (!last) {
    grad_pending_[static_cast<std::size_t>(slot_)] = need_grad;
    return T(0);
  }
  block_.norm_forward_to(act(lnf_), act16(lnf_bf16_), act(lnf_mean_), act(lnf_rstd_),
                         res_in(config_.n_layer), params_.data(), layout_.lnf_w(), layout_.lnf_b(),
                         local_rows());
  // The loss head sees every row: gathered under sequence parallelism.
  typename Block<T>::Input lnf{act(lnf_), act16(lnf_bf16_)};
  if (sequence_) {
    group_->all_gather(act(lnf_), tmp(gathered_), local_rows() * C);
    lnf.f32 = tmp(gathered_);
  }

  // Loss head in row chunks; with need_grad the chunk's logits turn into
  // their gradient in place and are consumed at once.
  const int Vp = vocab_part_;
  const T dloss = need_grad ? grad_scale / T(N) : T(0);
  for (int r0 = 0; r0 < N; r0 += static_cast<int>(chunk_rows_)) {
    const int rows = std::min(static_cast<int>(chunk_rows_), N - r0);
    const auto x = lnf.from_row(r0, C);
    if (logits_bf16_ >= 0) {
      // In bf16: the logits from the GEMM, the loss from them in fp32, and
      // their gradient over them, straight into the GEMMs.
      Bf16Inputs<T>* h = backend_.bf16_inputs();
      std::uint16_t* logits = tmp16(logits_bf16_);
      h->matmul_forward(logits, x.bf16, p(layout_.lm_head()), nullptr, rows, C, Vp);
      h->crossentropy_forward_backward(logits, act(losses_) + r0, targets + r0, rows,
                                       config_.vocab_size, Vp, dloss);
      if (need_grad) {
        h->matmul_backward(tmp(dlnf_) + static_cast<std::int64_t>(r0) * C, g(layout_.lm_head()),
                           nullptr, nullptr, logits, x.bf16, p(layout_.lm_head()), rows, C, Vp);
      }
      continue;
    }
    block_.matmul_forward(tmp(logits_), x, p(layout_.lm_head()), nullptr, rows, C, Vp, false);
    chunk_crossentropy(tmp(logits_), act(losses_) + r0, targets + r0, rows, dloss);
    if (need_grad) {
      block_.matmul_backward(tmp(dlnf_) + static_cast<std::int64_t>(r0) * C, g(layout_.lm_head()),
                             nullptr, {tmp(logits_)}, x, p(layout_.lm_head()), rows, C, Vp);
    }
  }
  // Each rank's lm-head part contributes to the gradient of every row.
  if (need_grad && sequence_) {
    group_->reduce_scatter(tmp(dlnf_), tmp(dlocal_), local_rows() * C);
  } else if (need_grad && group_ != nullptr) {
    group_->sum(tmp(dlnf_), static_cast<std::int64_t>(N) * C);
  }
  grad_pending_[static_cast<std::size_t>(slot_)] = need_grad;
  if (need_grad) head_slot_ = slot_;
  const T* losses = act(losses_);
  if (!backend_.host_memory()) {
    losses_host_.resize(static_cast<std::size_t>(N));
    backend_.download(losses_host_.data(), losses, losses_host_.size() * sizeof(T));
    losses = losses_host_.data();
  }
  double sum = 0;
  for (int i = 0; i < N; ++i) sum += static_cast<double>(losses[i]);
  return static_cast<T>(sum / N);
}

template <typename T>
void Model<T>::chunk_crossentropy(T* logits, T* losses, const std::int32_t* targets, int rows,
                                  T dloss) {
  if (group_ == nullptr) {
    backend_.crossentropy_forward_backward(logits, losses, targets, rows, config_.vocab_size,
                                           vocab_part_, dloss);
    return;
  }
  // Vocabulary-parallel (Megatron-LM): the row maxima, then the sums of
  // exponentials and the target logits, are reduced over the group; no rank
  // holds a whole row of logits.
  const int real = std::clamp(config_.vocab_size - vocab_first_, 0, vocab_part_);
  backend_.crossentropy_part_max(tmp(row_max_), logits, rows, real, vocab_part_);
  group_->max(tmp(row_max_), rows);
  backend_.crossentropy_part_sums(logits, tmp(row_sums_), tmp(row_max_), targets, vocab_first_,
                                  rows, real, vocab_part_, dloss != T(0));
  group_->sum(tmp(row_sums_), 2 * static_cast<std::int64_t>(rows));
  backend_.crossentropy_part_finish(logits, losses, tmp(row_max_), tmp(row_sums_), targets,
                                    vocab_first_, rows, real, vocab_part_, dloss);
}

template <typename T>
void Model<T>::backward(const std::function<void(std::int64_t)>& grads_final_from) {
  const bool first = stage().first();
  const bool last = stage().last();
  if (grad_pending_.empty() || !grad_pending_[static_cast<std::size_t>(slot_)]) {
    throw std::logic_error("Model::backward needs a preceding forward with need_grad");
  }
  if (last && head_slot_ != slot_) {
    throw std::logic_error("Model::backward: another forward ran since this slot's loss head");
  }
  grad_pending_[static_cast<std::size_t>(slot_)] = 0;
  head_slot_ = -1;
  // The forward's copy of the weights (which have not changed since).
  const WeightCopyInUse<T> weights(backend_, params_.data(), params16_.data(), params16_.size(),
                                   false);
  const int B = B_;
  const int seq = T_;
  const int N = B * seq;
  const std::int64_t nC = local_rows() * config_.d_model;

  // dres holds the gradient of the residual stream (of this rank's rows
  // under sequence parallelism), flowing down the blocks; on stages other
  // than the last it starts as the next stage's gradient (output_grad).
  if (last) {
    backend_.fill(tmp(dres_), T(0), nC);
    if (sequence_) {
      block_.norm_backward_rows(tmp(dres_), tmp(dlocal_), res_in(config_.n_layer), act(lnf_mean_),
                                act(lnf_rstd_), params_.data(), grads_.data(), layout_.lnf_w(),
                                layout_.lnf_b(), static_cast<int>(local_rows()), tmp(dnorm_));
    } else {
      block_.norm_backward(tmp(dres_), tmp(dlnf_), res_in(config_.n_layer), act(lnf_mean_),
                           act(lnf_rstd_), params_.data(), grads_.data(), layout_.lnf_w(),
                           layout_.lnf_b(), N, tmp16(dres_bf16_));
    }
    // Everything after the blocks in the layout (final norm, untied lm
    // head, whose gradient the loss head computed) is final now; so is each
    // block once its backward is done. Tied embeddings sit at offset 0.
    if (grads_final_from) grads_final_from(layout_.lnf_w());
  }
  typename Block<T>::Grads d{tmp(dres_), tmp(dln_),      tmp(datty_),
                             tmp(dqkv_), tmp(dmlp_act_), tmp(dfch_)};
  d.dfch_bf16 = tmp16(dfch_bf16_);
  d.dqkv_bf16 = tmp16(dqkv_bf16_);
  d.datty_bf16 = tmp16(datty_bf16_);
  d.dres_bf16 = tmp16(dres_bf16_);
  if (sequence_) {
    d.dgathered = tmp(dgathered_);
    d.dlocal = tmp(dlocal_);
    d.dnorm = tmp(dnorm_);
  }
  for (int l = layout_.end_layer() - 1; l >= layout_.first_layer(); --l) {
    block_.backward(l, params_.data(), grads_.data(), res_in(l), buffers(l),
                    act(layer_acts_[static_cast<std::size_t>(l - layout_.first_layer())].lse), d, B,
                    seq);
    if (grads_final_from) grads_final_from(layout_.layer(l).ln1_w);
  }
  // Stages other than the first are done: dres is their input's gradient.
  if (!first) {
    if (grads_final_from) grads_final_from(0);
    return;
  }
  T* dwpe = block_.dims().gpt2 ? g(layout_.wpe()) : nullptr;
  const std::int32_t* tokens = tokens_.data() + static_cast<std::ptrdiff_t>(slot_) * N;
  if (group_ == nullptr) {
    backend_.embedding_backward(g(layout_.wte()), dwpe, tmp(dres_), tokens, N, seq,
                                config_.d_model);
  } else {
    // Every row's gradient meets this rank's vocabulary rows.
    const T* dout = tmp(dres_);
    if (sequence_) {
      group_->all_gather(tmp(dres_), tmp(dgathered_), nC);
      dout = tmp(dgathered_);
    }
    backend_.embedding_backward_part(g(layout_.wte()), dwpe, dout, tokens, vocab_first_,
                                     vocab_part_, N, seq, config_.d_model);
  }
  if (grads_final_from) grads_final_from(0);
}

template <typename T>
std::span<const T> Model<T>::losses() const {
  if (!stage().last() || cap_B_ == 0) return {};
  if (!backend_.host_memory()) return losses_host_;
  return {act(losses_), static_cast<std::size_t>(B_) * T_};
}

template class Model<float>;
template class Model<double>;

}  // namespace borealis
