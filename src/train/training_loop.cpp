#include "train/training_loop.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>

#include "core/stopwatch.h"
#include "core/text.h"
#include "optim/adamw.h"
#include "train/dist_checkpoint.h"
#include "train/validation.h"

namespace borealis {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

// The first SIGINT/SIGTERM asks the loop to stop after the current step; a
// second one exits at once.
std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int sig) {
  if (g_stop_signal.exchange(sig) != 0) _exit(128 + sig);
  static const char msg[] =
      "\nborealis: stopping after this step with a checkpoint (signal again to exit now)\n";
  [[maybe_unused]] const auto n = ::write(STDERR_FILENO, msg, sizeof msg - 1);
}

class SignalScope {
 public:
  SignalScope() {
    g_stop_signal = 0;
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
  }
  ~SignalScope() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }
  SignalScope(const SignalScope&) = delete;
  SignalScope& operator=(const SignalScope&) = delete;

 private:
  struct sigaction old_int_ {};
  struct sigaction old_term_ {};
};

}  // namespace

// Loss-spike rule (as llm.c's outlier detector): the z-score of a loss
// against the last `window` losses, once that many have been seen.
class TrainingLoop::SpikeDetector {
 public:
  SpikeDetector(std::size_t window, std::vector<double> recent)
      : window_(window), recent_(std::move(recent)) {
    while (recent_.size() > window_) recent_.erase(recent_.begin());
  }
  double zscore(double loss) const {
    if (recent_.size() < window_) return 0;
    double mean = 0, var = 0;
    for (const double x : recent_) mean += x;
    mean /= static_cast<double>(recent_.size());
    for (const double x : recent_) var += (x - mean) * (x - mean);
    const double sd = std::sqrt(var / static_cast<double>(recent_.size()));
    return sd > 0 ? (loss - mean) / sd : 0;
  }
  void add(double loss) {
    recent_.push_back(loss);
    if (recent_.size() > window_) recent_.erase(recent_.begin());
  }
  const std::vector<double>& recent() const { return recent_; }

 private:
  std::size_t window_;
  std::vector<double> recent_;
};

TrainingLoop::TrainingLoop(const RunParts& parts, TrainState& state, TrainRunResult& result,
                           bool resumed)
    : p_(parts),
      s_(parts.settings),
      state_(state),
      result_(result),
      ranks_(parts.comm.size()),
      rank_(parts.comm.rank()),
      data_ranks_(parts.groups.data().size()),
      data_rank_(parts.groups.data().rank()),
      model_parallel_(parts.groups.layout().tensor > 1 || parts.groups.layout().pipeline > 1),
      progress_(parts.options.progress && rank_ == 0),
      local_micro_(s_.accumulation() / data_ranks_),
      spikes_(std::make_unique<SpikeDetector>(static_cast<std::size_t>(s_.spike_window),
                                              state.recent_losses)),
      saver_(parts.comm, parts.checkpoint, s_.checkpoint_async),
      checkpointed_step_(resumed ? state.step : -1),
      elapsed_before_(state.elapsed_s),
      micro_losses_(static_cast<std::size_t>(local_micro_)),
      all_losses_(static_cast<std::size_t>(s_.accumulation())),
      stragglers_(parts.comm, s_.straggler_every, s_.straggler_factor, parts.metrics,
                  parts.groups.layout().pipeline_rank) {
  // Data rank r reads its slice of every global batch: samples r * G / n ...
  // of each step's G (the ranks of a tensor group read the same).
  const auto per_rank = static_cast<std::uint64_t>(s_.global_batch / data_ranks_);
  loader_ = std::make_unique<BatchLoader>(
      p_.train, s_.micro_batch,
      state_.next_sample + per_rank * static_cast<std::uint64_t>(data_rank_), s_.prefetch,
      data_ranks_ > 1 ? per_rank : 0, static_cast<std::uint64_t>(s_.global_batch));
  // The tasks see the whole model, gathered from the parts.
  if (model_parallel_ && s_.tasks.enabled()) {
    whole_ = std::make_unique<WholeModel>(p_.groups, s_.model);
  }
  saver_.prepare(p_.model.layout(), p_.dp);
  if (saver_.copy_bytes() > 0) {
    spdlog::info("asynchronous checkpoints: {} of host memory for the copy being written",
                 format_bytes(saver_.copy_bytes()));
  }
  loop_start_ = Clock::now();
}

TrainingLoop::~TrainingLoop() = default;

double TrainingLoop::elapsed_s() const {
  return elapsed_before_ + seconds_since(loop_start_);
}

void TrainingLoop::run() {
  SignalScope signals;
  while (state_.step < s_.steps) {
    report_step(s_.skips(state_.step + 1) ? skip_data_step() : train_step());
    stragglers_.after_step(state_.step);
    if (validation_due()) validate();
    if (checkpoint_due()) save_checkpoint();
    result_.stop_reason = stop_reason();
    result_.stopped = !result_.stop_reason.empty();
    if (result_.stopped) break;
  }
  if (!result_.stopped) validate();
  if (checkpointed_step_ != state_.step && saver_.pending_step() != state_.step) {
    save_checkpoint();
  }
  if (saver_.pending()) finish_checkpoint();
  if (stopped_by_file_ && rank_ == 0) {
    // Consumed, so that the resumed run does not stop at once.
    std::error_code ec;
    fs::remove(s_.stop_file, ec);
    spdlog::info("removed the stop file {}", s_.stop_file.string());
  }
}

void TrainingLoop::advance_step() {
  ++state_.step;
  ++steps_this_run_;
  state_.tokens += static_cast<std::uint64_t>(s_.global_batch) * s_.seq_len;
  state_.next_sample += static_cast<std::uint64_t>(s_.global_batch);
}

TrainingLoop::StepOutcome TrainingLoop::skip_data_step() {
  p_.fault.at_step(rank_, state_.step + 1);
  const auto t0 = Clock::now();
  for (int micro = 0; micro < local_micro_; ++micro) loader_->next();
  StepOutcome out;
  out.loss = std::nan("");
  out.grad_norm = std::nan("");
  out.lr = s_.schedule.lr(state_.step);
  out.skip_reason = "train.skip_steps";
  ++state_.skipped_steps;
  spdlog::warn("step {}: skipped by train.skip_steps: its {} sequences are read and dropped",
               state_.step + 1, s_.global_batch);
  advance_step();
  out.seconds = seconds_since(t0);
  return out;
}

TrainingLoop::StepOutcome TrainingLoop::train_step() {
  p_.fault.at_step(rank_, state_.step + 1);
  const auto t0 = Clock::now();
  const double grad_scale = 1.0 / s_.accumulation();
  const auto grads_final = [this](std::int64_t offset) { p_.dp.grads_final(offset); };
  p_.model.zero_grad();
  PhaseTimes phases;
  StepOutcome out;
  // The parameters hold still until the update: the micro-batches share one
  // rounding of the weights' bf16 copy.
  std::optional<Model<float>::ParamsHeld> held(std::in_place, p_.model);
  if (p_.pipeline != nullptr) {
    // The step's micro-batches, read first, then through the stages.
    const auto wait = Clock::now();
    step_tokens_.clear();
    step_targets_.clear();
    int B = 0, seq = 0;
    for (int micro = 0; micro < local_micro_; ++micro) {
      const Batch b = loader_->next();
      step_tokens_.insert(step_tokens_.end(), b.inputs.begin(), b.inputs.end());
      step_targets_.insert(step_targets_.end(), b.targets.begin(), b.targets.end());
      B = b.batch;
      seq = b.seq;
    }
    phases.data += seconds_since(wait);
    micro_losses_ = p_.pipeline->train(step_tokens_.data(), step_targets_.data(), B, seq,
                                       static_cast<float>(grad_scale));
    p_.pipeline->sync_tied_grads();
    out.bubble = p_.pipeline->times().bubble();
    // Waiting for the neighbouring stages is communication, not compute.
    phases.comm += p_.pipeline->times().total_s - p_.pipeline->times().compute_s;
  }
  for (int micro = 0; p_.pipeline == nullptr && micro < local_micro_; ++micro) {
    const auto wait = Clock::now();
    const Batch b = loader_->next();
    phases.data += seconds_since(wait);
    micro_losses_[static_cast<std::size_t>(micro)] = p_.model.forward(
        b.inputs.data(), b.targets.data(), b.batch, b.seq, true, static_cast<float>(grad_scale));
    // The last backward of the step reports finished gradients, so their
    // reduction overlaps the rest of the pass.
    if (data_ranks_ > 1 && micro == local_micro_ - 1) {
      p_.model.backward(grads_final);
    } else {
      p_.model.backward();
    }
  }
  held.reset();
  const auto comm_start = Clock::now();
  p_.dp.finish_reduction();
  p_.groups.data().all_gather(std::span<const double>(micro_losses_),
                              std::span<double>(all_losses_));
  for (const double l : all_losses_) out.loss += l;
  out.loss /= s_.accumulation();
  out.grad_norm = p_.dp.grad_norm();
  phases.comm = seconds_since(comm_start);
  out.lr = s_.schedule.lr(state_.step);
  if (!std::isfinite(out.loss) || !std::isfinite(out.grad_norm)) {
    out.skip_reason = "non-finite loss or gradient norm";
  } else if (s_.spike_zscore > 0 && spikes_->zscore(out.loss) > s_.spike_zscore) {
    out.skip_reason = fmt::format("loss spike (z-score {:.1f})", spikes_->zscore(out.loss));
  }
  phase_ = TrainPhase::Updating;
  if (out.skip_reason.empty()) {
    p_.dp.step(static_cast<float>(out.lr), clip_scale(out.grad_norm, s_.grad_clip));
  } else {
    ++state_.skipped_steps;
    spdlog::warn("step {}: update skipped: {} (loss {}, gradient norm {})", state_.step + 1,
                 out.skip_reason, out.loss, out.grad_norm);
  }
  if (std::isfinite(out.loss)) spikes_->add(out.loss);
  advance_step();
  result_.last_loss = out.loss;
  phase_ = TrainPhase::Consistent;
  out.seconds = seconds_since(t0);
  phases.compute = out.seconds - phases.data - phases.comm;
  stragglers_.add(phases);
  return out;
}

void TrainingLoop::report_step(const StepOutcome& step) {
  const double tokens_per_step = static_cast<double>(s_.global_batch) * s_.seq_len;
  const double tok_s = tokens_per_step / step.seconds;
  const double mfu = p_.flops_per_token * tok_s * 1e-9 / (p_.peak_gflops * ranks_);
  const double run_s = seconds_since(loop_start_);
  if (p_.metrics != nullptr) {
    p_.metrics->write(fmt::format(
        R"({{"kind":"train","step":{},"tokens":{},"loss":{},"lr":{},"grad_norm":{},"tokens_per_s":{},"mfu":{},"elapsed_s":{},"skipped":{}{}{}}})",
        state_.step, state_.tokens, json_number(step.loss), json_number(step.lr),
        json_number(step.grad_norm), json_number(tok_s), json_number(mfu),
        json_number(elapsed_before_ + run_s), step.skip_reason.empty() ? "false" : "true",
        step.bubble >= 0 ? fmt::format(R"(,"bubble":{})", json_number(step.bubble)) : "",
        step.skip_reason.empty() ? ""
                                 : ",\"skip_reason\":" + nlohmann::json(step.skip_reason).dump()));
  }
  if (progress_ && (state_.step % s_.log_every == 0 || state_.step == s_.steps)) {
    const double eta =
        run_s / static_cast<double>(steps_this_run_) * static_cast<double>(s_.steps - state_.step);
    fmt::print(
        "step {:>{}}/{} | loss {:.4f} | lr {:.2e} | norm {:.3f} | {:.0f} tok/s | MFU "
        "{:.1f}%{} | ETA {}{}\n",
        state_.step, fmt::formatted_size("{}", s_.steps), s_.steps, step.loss, step.lr,
        step.grad_norm, tok_s, 100 * mfu,
        step.bubble >= 0 ? fmt::format(" | bubble {:.0f}%", 100 * step.bubble) : "",
        format_duration(eta), step.skip_reason.empty() ? "" : " | skipped: " + step.skip_reason);
    std::fflush(stdout);
  }
}

// The last step is validated and checkpointed after the loop, whatever the
// intervals say.
bool TrainingLoop::validation_due() const {
  return state_.step != s_.steps && s_.eval_every > 0 && state_.step % s_.eval_every == 0;
}

bool TrainingLoop::checkpoint_due() const {
  return state_.step != s_.steps && s_.checkpoint_every > 0 &&
         state_.step % s_.checkpoint_every == 0;
}

std::string TrainingLoop::stop_reason() {
  if (state_.step == s_.steps) return "";  // the run ends here anyway
  int stop_signal = g_stop_signal;
  bool time_up = s_.max_minutes > 0 && seconds_since(p_.wall_start) >= 60 * s_.max_minutes;
  // Rank 0 alone looks for the stop file (one stat per step); the gather
  // tells the others.
  bool stop_file = rank_ == 0 && !s_.stop_file.empty() && fs::exists(s_.stop_file);
  // A checkpoint written in the background is published once every rank's
  // part is written.
  bool written = saver_.local_done();
  if (ranks_ > 1) {
    // A signal or the time limit on any rank stops every rank at this step.
    const std::array<double, 4> mine = {static_cast<double>(stop_signal), time_up ? 1.0 : 0.0,
                                        stop_file ? 1.0 : 0.0, written ? 1.0 : 0.0};
    std::vector<double> all(4 * static_cast<std::size_t>(ranks_));
    p_.comm.all_gather(std::span<const double>(mine), std::span<double>(all));
    for (std::size_t r = 0; r < static_cast<std::size_t>(ranks_); ++r) {
      if (stop_signal == 0) stop_signal = static_cast<int>(all[4 * r]);
      time_up = time_up || all[4 * r + 1] != 0;
      stop_file = stop_file || all[4 * r + 2] != 0;
      written = written && all[4 * r + 3] != 0;
    }
  }
  if (saver_.pending() && written) finish_checkpoint();
  if (stop_signal != 0) return stop_signal == SIGINT ? "SIGINT" : "SIGTERM";
  if (stop_file) {
    stopped_by_file_ = true;
    return "the stop file " + s_.stop_file.string();
  }
  if (p_.options.stop_at_step > 0 && state_.step >= p_.options.stop_at_step) {
    return fmt::format("--stop-at-step {}", p_.options.stop_at_step);
  }
  if (time_up) return fmt::format("the {} minute limit", s_.max_minutes);
  return "";
}

void TrainingLoop::validate() {
  if (!p_.valid_batches.empty()) {
    const auto t0 = Clock::now();
    result_.valid_loss =
        borealis::validate(p_.model, p_.valid_batches, progress_, p_.groups.data(), p_.pipeline);
    if (p_.metrics != nullptr) {
      p_.metrics->write(fmt::format(
          R"({{"kind":"valid","step":{},"tokens":{},"loss":{},"elapsed_s":{}}})", state_.step,
          state_.tokens, json_number(result_.valid_loss), json_number(elapsed_s())));
    }
    if (progress_) {
      fmt::print("validation at step {}: loss {:.4f} (unigram entropy {:.4f}) in {:.1f} s\n",
                 state_.step, result_.valid_loss, result_.unigram_entropy, seconds_since(t0));
      std::fflush(stdout);
    }
  }
  if (model_parallel_ && s_.tasks.enabled()) {
    // The tasks run on rank 0 over the whole model.
    whole_->gather(p_.model.layout(), p_.model.params());
  }
  if (p_.tasks != nullptr) evaluate_tasks();
}

// Rank 0 alone: the other ranks go on to the next collective and wait there,
// which is why the evaluation's time counts against dist.timeout_s.
void TrainingLoop::evaluate_tasks() {
  const auto t0 = Clock::now();
  const std::vector<TaskScore> scores =
      model_parallel_ ? p_.tasks->evaluate(s_.model,
                                           std::span<const float>(
                                               whole_->params(),
                                               static_cast<std::size_t>(whole_->layout().total())),
                                           progress_)
                      : p_.tasks->evaluate(s_.model, host_params(), progress_);
  const double run_s = elapsed_s();
  for (const TaskScore& score : scores) {
    std::string fields;
    for (const auto& [metric, value] : score.metrics) {
      fields += fmt::format(R"(,"{}":{})", metric, json_number(value));
    }
    if (score.seconds >= 0) fields += fmt::format(R"(,"eval_s":{})", json_number(score.seconds));
    if (p_.metrics != nullptr) {
      // Task names are lm-eval's identifiers or a task file's "name"; dump()
      // quotes and escapes them.
      p_.metrics->write(fmt::format(
          R"({{"kind":"eval","step":{},"tokens":{},"task":{}{},"elapsed_s":{}}})", state_.step,
          state_.tokens, nlohmann::json(score.task).dump(), fields, json_number(run_s)));
    }
    if (!progress_) continue;
    for (const auto& [metric, value] : score.metrics) {
      if (metric.ends_with("_stderr")) continue;
      std::string line =
          fmt::format("eval at step {}: {} {} {:.4f}", state_.step, score.task, metric, value);
      for (const auto& [other, se] : score.metrics) {
        if (other == metric + "_stderr") line += fmt::format(" ± {:.4f}", se);
      }
      fmt::print("{}\n", line);
    }
  }
  if (progress_) {
    fmt::print("evaluated {} task{} at step {} in {:.1f} s\n", scores.size(),
               scores.size() == 1 ? "" : "s", state_.step, seconds_since(t0));
    std::fflush(stdout);
  }
}

std::span<const float> TrainingLoop::host_params() {
  Backend<float>& backend = p_.dp.backend();
  const auto n = static_cast<std::size_t>(p_.model.num_params());
  if (backend.host_memory()) return {p_.model.params(), n};
  host_params_.resize(n);
  backend.download(host_params_.data(), p_.model.params(), n * sizeof(float));
  return host_params_;
}

void TrainingLoop::update_state() {
  state_.recent_losses = spikes_->recent();
  state_.elapsed_s = elapsed_s();
}

void TrainingLoop::save_checkpoint() {
  if (saver_.pending()) finish_checkpoint();
  update_state();
  phase_ = TrainPhase::Saving;
  p_.fault.before_save(rank_, state_.step);
  // Every rank takes part (a ZeRO-1 rank writes its own shard; with tensor
  // or pipeline parallelism every part is written where it is).
  saver_.start(state_, p_.model.layout(), p_.model.params(), p_.dp,
               p_.fault.fails_save(rank_, state_.step));
  phase_ = TrainPhase::Consistent;
  if (!s_.checkpoint_async) finish_checkpoint();
}

void TrainingLoop::finish_checkpoint() {
  const std::int64_t step = saver_.pending_step();
  // A synchronous save is still in the middle of saving; behind an
  // asynchronous one the state belongs to this step, whatever the save does.
  if (!s_.checkpoint_async) phase_ = TrainPhase::Saving;
  try {
    result_.last_checkpoint = saver_.finish();
  } catch (const CommTimeout&) {
    throw;
  } catch (const Error& e) {
    // Say where the run stands: the checkpoint before is untouched.
    throw Error(e.message() + (result_.last_checkpoint.empty()
                                   ? "; the run has no earlier checkpoint"
                                   : "; the last checkpoint, " + result_.last_checkpoint.string() +
                                         ", is intact and `borealis train` resumes from it"),
                e.where());
  }
  checkpointed_step_ = step;
  phase_ = TrainPhase::Consistent;
}

void TrainingLoop::save_after_timeout(const CommTimeout& timeout) {
  saver_.abandon();
  if (model_parallel_) {
    // No rank holds the whole model, and the ranks cannot agree on a
    // checkpoint of the parts now.
    spdlog::warn(
        "no checkpoint after the time-out: the parts of a tensor- or pipeline-parallel run "
        "are saved together, which needs every rank; `borealis train` resumes from the last "
        "checkpoint{}",
        result_.last_checkpoint.empty() ? " (none yet)" : ", " + result_.last_checkpoint.string());
    return;
  }
  update_state();
  TimeoutRescue rescue;
  rescue.phase = phase_;
  rescue.state = &state_;
  rescue.checkpointed_step = checkpointed_step_;
  rescue.last_checkpoint = result_.last_checkpoint;
  rescue.zero = s_.zero;
  rescue.target = &p_.checkpoint;
  rescue.layout = &p_.model.layout();
  rescue.params = p_.model.params();
  rescue.optimizer = &p_.dp.optimizer();
  borealis::save_after_timeout(timeout, p_.comm, rescue, p_.comm.timeout());
}

}  // namespace borealis
