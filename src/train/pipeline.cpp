#include "train/pipeline.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>

#include "core/error.h"

namespace borealis {

const char* pipe_action_name(PipeAction::Kind kind) {
  switch (kind) {
    case PipeAction::kForward:
      return "forward";
    case PipeAction::kBackward:
      return "backward";
    case PipeAction::kRecvForward:
      return "recv-forward";
    case PipeAction::kSendForward:
      return "send-forward";
    case PipeAction::kRecvBackward:
      return "recv-backward";
    case PipeAction::kSendBackward:
      return "send-backward";
    case PipeAction::kSendForwardRecvBackward:
      return "send-forward-recv-backward";
    case PipeAction::kSendBackwardRecvForward:
      return "send-backward-recv-forward";
  }
  return "?";
}

std::vector<PipeAction> one_f_one_b(int stage, int stages, int micro_batches) {
  if (stages < 1 || stage < 0 || stage >= stages || micro_batches < 1) {
    throw std::invalid_argument(
        fmt::format("one_f_one_b: stage {} of {}, {} micro-batches", stage, stages, micro_batches));
  }
  const bool first = stage == 0;
  const bool last = stage == stages - 1;
  const int warmup = std::min(stages - stage - 1, micro_batches);
  const int steady = micro_batches - warmup;
  std::vector<PipeAction> a;
  int fwd = 0, bwd = 0;
  for (int i = 0; i < warmup; ++i, ++fwd) {
    if (!first) a.push_back({PipeAction::kRecvForward, fwd});
    a.push_back({PipeAction::kForward, fwd});
    if (!last) a.push_back({PipeAction::kSendForward, fwd});
  }
  if (steady > 0 && !first) a.push_back({PipeAction::kRecvForward, fwd});
  for (int i = 0; i < steady; ++i, ++fwd, ++bwd) {
    a.push_back({PipeAction::kForward, fwd});
    if (!last) a.push_back({PipeAction::kSendForwardRecvBackward, fwd, bwd});
    a.push_back({PipeAction::kBackward, bwd});
    if (first) continue;
    if (i + 1 < steady) {
      a.push_back({PipeAction::kSendBackwardRecvForward, bwd, fwd + 1});
    } else {
      a.push_back({PipeAction::kSendBackward, bwd});
    }
  }
  for (int i = 0; i < warmup; ++i, ++bwd) {
    if (!last) a.push_back({PipeAction::kRecvBackward, bwd});
    a.push_back({PipeAction::kBackward, bwd});
    if (!first) a.push_back({PipeAction::kSendBackward, bwd});
  }
  return a;
}

namespace {

// One message half of an action: to or from the next (up) or previous
// stage, carrying a forward output or a backward gradient of a micro-batch.
struct Half {
  bool send;
  bool up;       // between this stage and the next (else the previous)
  bool forward;  // an activation (else a gradient)
  int micro;
};

std::vector<Half> halves(const PipeAction& a) {
  switch (a.kind) {
    case PipeAction::kRecvForward:
      return {{false, false, true, a.micro}};
    case PipeAction::kSendForward:
      return {{true, true, true, a.micro}};
    case PipeAction::kRecvBackward:
      return {{false, true, false, a.micro}};
    case PipeAction::kSendBackward:
      return {{true, false, false, a.micro}};
    case PipeAction::kSendForwardRecvBackward:
      return {{true, true, true, a.micro}, {false, true, false, a.other}};
    case PipeAction::kSendBackwardRecvForward:
      return {{true, false, false, a.micro}, {false, false, true, a.other}};
    default:
      return {};
  }
}

}  // namespace

std::string check_schedule(const std::vector<std::vector<PipeAction>>& stages) {
  const int P = static_cast<int>(stages.size());
  std::vector<std::size_t> at(stages.size(), 0);
  // Which halves of each stage's current action are done.
  std::vector<std::vector<bool>> done(stages.size());
  const auto current = [&](int s) -> const PipeAction* {
    const auto& list = stages[static_cast<std::size_t>(s)];
    return at[static_cast<std::size_t>(s)] < list.size() ? &list[at[static_cast<std::size_t>(s)]]
                                                         : nullptr;
  };
  for (int s = 0; s < P; ++s) {
    if (const PipeAction* a = current(s))
      done[static_cast<std::size_t>(s)].assign(halves(*a).size(), false);
  }
  const auto advance = [&](int s) {
    ++at[static_cast<std::size_t>(s)];
    if (const PipeAction* a = current(s)) {
      done[static_cast<std::size_t>(s)].assign(halves(*a).size(), false);
    }
  };
  for (;;) {
    bool moved = false;
    for (int s = 0; s < P; ++s) {
      const PipeAction* a = current(s);
      if (a == nullptr) continue;
      const std::vector<Half> hs = halves(*a);
      auto& mine = done[static_cast<std::size_t>(s)];
      // Match each open half against the peer's current action.
      for (std::size_t h = 0; h < hs.size(); ++h) {
        if (mine[h]) continue;
        const int peer = hs[h].up ? s + 1 : s - 1;
        if (peer < 0 || peer >= P) {
          return fmt::format("stage {} {}s micro-batch {} to a stage that does not exist", s,
                             pipe_action_name(a->kind), hs[h].micro);
        }
        const PipeAction* b = current(peer);
        if (b == nullptr) continue;
        const std::vector<Half> theirs = halves(*b);
        auto& their_done = done[static_cast<std::size_t>(peer)];
        for (std::size_t k = 0; k < theirs.size(); ++k) {
          const Half& t = theirs[k];
          if (their_done[k] || t.send == hs[h].send || t.up == hs[h].up ||
              t.forward != hs[h].forward) {
            continue;
          }
          if (t.micro != hs[h].micro) {
            return fmt::format("stage {} {} micro-batch {} meets stage {} {} micro-batch {}", s,
                               pipe_action_name(a->kind), hs[h].micro, peer,
                               pipe_action_name(b->kind), t.micro);
          }
          mine[h] = true;
          their_done[k] = true;
          moved = true;
          break;
        }
      }
      if (std::ranges::all_of(mine, [](bool d) { return d; })) {
        advance(s);
        moved = true;
      }
    }
    bool finished = true;
    for (std::size_t s = 0; s < stages.size(); ++s)
      finished = finished && at[s] == stages[s].size();
    if (finished) return "";
    if (!moved) {
      std::string where;
      for (int s = 0; s < P; ++s) {
        const PipeAction* a = current(s);
        where += fmt::format(
            "{}stage {}: {}", s ? "; " : "", s,
            a ? fmt::format("{} {}", pipe_action_name(a->kind), a->micro) : std::string("done"));
      }
      return "deadlock: " + where;
    }
  }
}

double ideal_bubble(int stages, int micro_batches) {
  return static_cast<double>(stages - 1) / micro_batches;
}

template <typename T>
Pipeline<T>::Pipeline(Communicator& pipe, Model<T>& model, int micro_batches)
    : pipe_(pipe),
      model_(model),
      micro_(micro_batches),
      stage_(model.stage().stage),
      stages_(model.stage().stages),
      slots_(std::min(stages_ - stage_, micro_batches)) {
  if (pipe.size() != stages_ || pipe.rank() != stage_) {
    throw std::invalid_argument(
        fmt::format("Pipeline: stage {} of {} on rank {} of a pipeline of {}", stage_, stages_,
                    pipe.rank(), pipe.size()));
  }
  if (micro_batches < 1) {
    throw Error(fmt::format("a pipeline step needs at least 1 micro-batch, got {}", micro_batches),
                "micro_batches");
  }
  if (stages_ > 1) {
    const bool end = model.stage().first() || model.stage().last();
    ends_ = pipe.split(end ? 0 : 1, stage_);
  }
}

template <typename T>
std::span<T> Pipeline<T>::input(int micro, std::int64_t elems) {
  model_.use_slot(micro % slots_);
  return {model_.stage_input(), static_cast<std::size_t>(elems)};
}

template <typename T>
std::span<const T> Pipeline<T>::output(int micro, std::int64_t elems) {
  model_.use_slot(micro % slots_);
  return {model_.stage_output(), static_cast<std::size_t>(elems)};
}

template <typename T>
std::vector<double> Pipeline<T>::train(const std::int32_t* tokens, const std::int32_t* targets,
                                       int B, int seq, T grad_scale) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  double compute = 0;
  model_.reserve(B, seq, slots_);
  const std::int64_t n = model_.stage_elems(B, seq);
  const std::int64_t per_micro = static_cast<std::int64_t>(B) * seq;
  const int prev = stage_ - 1, next = stage_ + 1;
  losses_.assign(static_cast<std::size_t>(micro_), 0.0);
  const auto grad = [&] { return std::span<T>(model_.output_grad(), static_cast<std::size_t>(n)); };
  const auto input_grad = [&] {
    return std::span<const T>(model_.input_grad(), static_cast<std::size_t>(n));
  };
  double sent = 0;
  int messages = 0;
  for (const PipeAction& a : one_f_one_b(stage_, stages_, micro_)) {
    const int slot = a.micro % slots_;
    if (a.kind != PipeAction::kForward && a.kind != PipeAction::kBackward &&
        a.kind != PipeAction::kRecvForward && a.kind != PipeAction::kRecvBackward) {
      sent += static_cast<double>(n) * sizeof(T);
      ++messages;
    }
    switch (a.kind) {
      case PipeAction::kForward: {
        const auto t0 = Clock::now();
        model_.use_slot(slot);
        const T loss = model_.forward(tokens ? tokens + a.micro * per_micro : nullptr,
                                      targets ? targets + a.micro * per_micro : nullptr, B, seq,
                                      true, grad_scale);
        losses_[static_cast<std::size_t>(a.micro)] = static_cast<double>(loss);
        compute += std::chrono::duration<double>(Clock::now() - t0).count();
        break;
      }
      case PipeAction::kBackward: {
        const auto t0 = Clock::now();
        model_.use_slot(slot);
        model_.backward();
        compute += std::chrono::duration<double>(Clock::now() - t0).count();
        break;
      }
      case PipeAction::kRecvForward:
        pipe_.recv(input(a.micro, n), prev);
        break;
      case PipeAction::kSendForward:
        pipe_.send(output(a.micro, n), next);
        break;
      case PipeAction::kRecvBackward:
        pipe_.recv(grad(), next);
        break;
      case PipeAction::kSendBackward:
        pipe_.send(input_grad(), prev);
        break;
      case PipeAction::kSendForwardRecvBackward:
        pipe_.sendrecv(output(a.micro, n), next, grad(), next);
        break;
      case PipeAction::kSendBackwardRecvForward: {
        // The gradient leaves from scratch; the input lands in its slot.
        const std::span<const T> out = input_grad();
        pipe_.sendrecv(out, prev, input(a.other, n), prev);
        break;
      }
    }
  }
  std::vector<double> losses = share_losses();
  times_.compute_s = compute;
  times_.sent_bytes = sent;
  times_.messages = messages;
  times_.total_s = std::chrono::duration<double>(Clock::now() - start).count();
  return losses;
}

template <typename T>
std::vector<double> Pipeline<T>::evaluate(const std::int32_t* tokens, const std::int32_t* targets,
                                          int B, int seq, int count) {
  model_.reserve(B, seq, slots_);
  const std::int64_t n = model_.stage_elems(B, seq);
  const std::int64_t per_micro = static_cast<std::int64_t>(B) * seq;
  losses_.assign(static_cast<std::size_t>(count), 0.0);
  for (int i = 0; i < count; ++i) {
    // One activation set: a forward without gradients keeps nothing.
    model_.use_slot(0);
    if (!model_.stage().first()) pipe_.recv(input(0, n), stage_ - 1);
    const T loss = model_.forward(tokens ? tokens + i * per_micro : nullptr,
                                  targets ? targets + i * per_micro : nullptr, B, seq, false);
    losses_[static_cast<std::size_t>(i)] = static_cast<double>(loss);
    if (!model_.stage().last()) pipe_.send(output(0, n), stage_ + 1);
  }
  return share_losses();
}

template <typename T>
std::vector<double> Pipeline<T>::share_losses() {
  if (stages_ > 1) pipe_.broadcast(std::span<double>(losses_), stages_ - 1);
  return losses_;
}

template <typename T>
void Pipeline<T>::sync_tied_grads() {
  const PipelineStage& s = model_.stage();
  if (stages_ == 1 || !(s.first() || s.last())) return;
  if (!model_.config().tied_embeddings) return;
  const ParamView& wte = model_.layout().find("wte");
  ends_->allreduce(std::span<T>(model_.grads() + wte.offset, static_cast<std::size_t>(wte.size)),
                   ReduceOp::Sum);
}

template class Pipeline<float>;
template class Pipeline<double>;

}  // namespace borealis
