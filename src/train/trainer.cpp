#include "train/trainer.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/progress.h"
#include "core/stopwatch.h"
#include "core/text.h"
#include "core/threads.h"
#include "data/data_list.h"
#include "data/mixture.h"
#include "dist/communicator.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "optim/data_parallel.h"
#include "tokenizer/tokenizer.h"
#include "train/checkpoint.h"
#include "train/dist_checkpoint.h"
#include "train/loader.h"
#include "train/metrics_writer.h"
#include "train/rank_failure.h"
#include "train/train_bench.h"
#include "train/train_config.h"
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

// Loss-spike rule (as llm.c's outlier detector): the z-score of a loss
// against the last `window` losses, once that many have been seen.
class SpikeDetector {
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

// Raises the log level on ranks other than 0 for the run: they compute the
// same as rank 0, so their info and warnings would only repeat it.
class QuietRank {
 public:
  explicit QuietRank(bool quiet) : old_(spdlog::get_level()) {
    if (quiet) spdlog::set_level(std::max(old_, spdlog::level::err));
  }
  ~QuietRank() { spdlog::set_level(old_); }
  // Back to the level of the run, for messages only this rank gives.
  void speak() const { spdlog::set_level(old_); }
  QuietRank(const QuietRank&) = delete;
  QuietRank& operator=(const QuietRank&) = delete;

 private:
  spdlog::level::level_enum old_;
};

// A checkpoint's config against this run's: a different value of a key that
// changes what the run computes is an error; others are reported.
void check_resume_config(const Config& config, const CheckpointInfo& info) {
  Config old(config.schema());
  old.merge_toml(info.config_toml, (info.dir / "state.json").string() + " (config)");
  for (const auto& key : config.schema().keys()) {
    const std::string before = config_value_to_toml(old.value(key.path));
    const std::string now = config_value_to_toml(config.value(key.path));
    if (before == now) continue;
    if (is_trajectory_key(key.path)) {
      throw Error(fmt::format("{} is {} here but was {} in the run being resumed; resuming would "
                              "not continue the same training (use a new train.run_dir, or "
                              "--resume never after removing the checkpoints)",
                              key.path, now, before),
                  config.origin(key.path));
    }
    spdlog::info("resuming with {} = {} (was {})", key.path, now, before);
  }
}

std::optional<CheckpointInfo> find_resume_point(const TrainSettings& s,
                                                const TrainRunOptions& options) {
  if (options.resume == "never") {
    std::vector<std::pair<fs::path, std::string>> skipped;
    if (latest_checkpoint(s.checkpoint_dir(), skipped) || !skipped.empty()) {
      throw Error(
          "the run directory already has checkpoints; resume it (--resume auto) or use "
          "another train.run_dir",
          s.checkpoint_dir().string());
    }
    return std::nullopt;
  }
  if (options.resume != "auto") return verify_checkpoint(options.resume);
  std::vector<std::pair<fs::path, std::string>> skipped;
  auto found = latest_checkpoint(s.checkpoint_dir(), skipped);
  for (const auto& [dir, why] : skipped) {
    spdlog::warn("skipping checkpoint {}: {}", dir.string(), why);
  }
  return found;
}

}  // namespace

TrainRunResult run_training(const Config& config, const TrainRunOptions& options) {
  const auto wall_start = Clock::now();
  TrainSettings s = read_train_settings(config);
  std::unique_ptr<Communicator> own_comm;
  Communicator* comm = options.comm;
  const auto timeout = std::chrono::milliseconds(static_cast<std::int64_t>(s.timeout_s * 1000));
  const ReduceAlgorithm algorithm =
      s.reduce == "native" ? ReduceAlgorithm::Native : ReduceAlgorithm::Ordered;
  if (comm == nullptr) {
    CommOptions co;
    co.timeout = timeout;
    co.algorithm = algorithm;
    own_comm = make_communicator(co);
    comm = own_comm.get();
  }
  comm->set_timeout(timeout);
  comm->set_reduce_algorithm(algorithm);
  const int ranks = comm->size();
  const int rank = comm->rank();
  const bool root = rank == 0;
  const bool progress = options.progress && root;
  QuietRank quiet(!root);
  if (ranks > 1 && s.global_batch % (s.micro_batch * ranks) != 0) {
    throw Error(fmt::format("train.global_batch {} is not divisible by train.micro_batch {} x {} "
                            "ranks: every rank needs the same number of micro-batches",
                            s.global_batch, s.micro_batch, ranks),
                config.origin("train.global_batch"));
  }
  const InjectedFault fault = InjectedFault::from_env();
  const Tokenizer tokenizer = Tokenizer::load(s.tokenizer);
  s.model = resolve_model(config, static_cast<int>(tokenizer.vocab_size()));
  if (s.seq_len > s.model.max_seq) {
    throw Error(fmt::format("data.seq_len {} is longer than the model's max_seq {}", s.seq_len,
                            s.model.max_seq),
                config.origin("data.seq_len"));
  }
  const int L = s.seq_len;
  const std::int64_t tokens_per_step = static_cast<std::int64_t>(s.global_batch) * L;

  std::optional<CheckpointInfo> resume_from = find_resume_point(s, options);
  if (resume_from) check_resume_config(config, *resume_from);
  if (ranks > 1) {
    // Every rank must run the same configuration and resume from the same
    // step (they read the same files); each sees what all others have.
    const std::uint64_t h = hash64(config.to_toml());
    const std::array<double, 3> mine = {
        resume_from ? static_cast<double>(resume_from->state.step) : -1.0,
        static_cast<double>(h >> 32), static_cast<double>(h & 0xffffffffu)};
    std::vector<double> all(3 * static_cast<std::size_t>(ranks));
    comm->all_gather(std::span<const double>(mine), std::span<double>(all));
    for (std::size_t r = 1; r < static_cast<std::size_t>(ranks); ++r) {
      const std::string who = fmt::format("rank {} ({})", r, comm->host(static_cast<int>(r)));
      if (all[3 * r + 1] != all[1] || all[3 * r + 2] != all[2]) {
        throw Error(who +
                        " runs another configuration than rank 0; every rank must read the same "
                        "config and --set values",
                    "train config");
      }
      if (all[3 * r] != all[0]) {
        throw Error(fmt::format("{} resumes from step {} but rank 0 from step {}; the ranks must "
                                "see the same run directory",
                                who, all[3 * r], all[0]),
                    s.checkpoint_dir().string());
      }
    }
  }
  fs::create_directories(s.run_dir);
  if (root) write_file_atomic(s.run_dir / "config.toml", config.to_toml());

  // Data: the train mixture holds exactly the samples of all steps.
  MixOptions mix;
  mix.list = read_data_list(s.data_list);
  mix.seq_len = static_cast<std::uint64_t>(L);
  mix.samples = static_cast<std::uint64_t>(s.steps) * static_cast<std::uint64_t>(s.global_batch);
  mix.seed = s.seed;
  mix.split = s.split;
  mix.order = s.order == "megatron" ? MixOrder::megatron : MixOrder::fast;
  mix.cache_dir = s.cache_dir.empty() ? s.run_dir / "index-cache" : s.cache_dir;
  const Mixture train(mix);
  spdlog::info(
      "train mixture: {} samples of {} tokens from {} files in {} corpora ({} in {:.2f} s)",
      train.size(), L + 1, train.files().size(), train.corpora().size(),
      train.from_cache() ? "loaded"
      : train.building() ? "building in the background, ready"
                         : "built",
      train.ready_seconds());
  std::unique_ptr<Mixture> valid;
  std::vector<Batch> valid_batches;
  TrainRunResult result;
  if (s.eval_batches > 0 && s.split[1] > 0) {
    MixOptions vmix = mix;
    vmix.part = 1;
    vmix.samples = static_cast<std::uint64_t>(s.eval_batches) * s.micro_batch;
    valid = std::make_unique<Mixture>(vmix);
    valid_batches = read_valid_batches(*valid, s.micro_batch, s.eval_batches);
    result.unigram_entropy = unigram_entropy(valid_batches);
  } else if (s.eval_batches > 0) {
    spdlog::warn("no validation: data.split gives the valid part no documents");
  }

  // Model and optimizer, fresh or from the checkpoint.
  auto backend = make_cpu_backend<float>();
  Model<float> model(s.model, *backend);
  model.reserve(s.micro_batch, L);
  DataParallelOptions dpo;
  dpo.zero = s.zero;
  dpo.bucket_bytes = static_cast<std::size_t>(s.bucket_mb * (1 << 20));
  DataParallel dp(*comm, *backend, model.layout(), s.adamw, dpo, model.params(), model.grads());
  TrainState state;
  if (resume_from) {
    if (model_config_to_json(resume_from->model) != model_config_to_json(s.model)) {
      throw Error("the checkpoint's model differs from the configured one",
                  resume_from->dir.string());
    }
    // The parameters and this rank's range of the moments only.
    load_training_checkpoint(*resume_from, model.layout(), model.params(), dp);
    state = resume_from->state;
    spdlog::info("resuming from {} (step {}, {} tokens)", resume_from->dir.string(), state.step,
                 state.tokens);
  } else {
    model.init(s.seed);
  }
  result.first_step = state.step;
  result.skipped_steps = state.skipped_steps;
  result.last_checkpoint = resume_from ? resume_from->dir : fs::path();

  double peak = s.peak_gflops;
  if (peak == 0 && !root) peak = 1;  // only rank 0 reports MFU
  if (peak == 0) {
    for (auto& g : model_gemm_shapes(s.model, s.micro_batch * L, model.loss_chunk_rows())) {
      time_gemm(g);
      peak = std::max(peak, g.gflops);
    }
  }
  const double flops_per_token = train_flops_per_token(s.model, model.num_params(), L);
  spdlog::info("model {} ({}, {:.2f}M parameters), {} threads, sgemm peak {:.1f} GFLOP/s",
               s.model.name, family_name(s.model.family), model.num_params() / 1e6, cpu_threads(),
               peak);
  spdlog::info("{} steps of {} sequences x {} tokens ({} micro-batches of {}), {} tokens in all",
               s.steps, s.global_batch, L, s.accumulation(), s.micro_batch,
               s.steps * tokens_per_step);
  const int local_micro = s.accumulation() / ranks;
  if (ranks > 1) {
    std::string hosts;
    for (int r = 0; r < ranks; ++r) hosts += (r ? ", " : "") + comm->host(r);
    spdlog::info(
        "data parallel: {} ranks ({}), {} micro-batches of {} per rank and step; ZeRO-{}, {} "
        "gradient buckets of up to {} MiB, {} reduction, time-out {} s",
        ranks, hosts, local_micro, s.micro_batch, s.zero, dp.buckets(), s.bucket_mb, s.reduce,
        s.timeout_s);
  }
  const std::size_t param_bytes = static_cast<std::size_t>(model.num_params()) * sizeof(float);
  spdlog::info(
      "memory per rank: parameters {}, gradients {}, optimizer {}{}, communication buffers {}, "
      "activations {}; {} in all",
      format_bytes(param_bytes), format_bytes(param_bytes), format_bytes(dp.optimizer_bytes()),
      ranks > 1 && s.zero == 1 ? fmt::format(" (a 1/{} shard)", ranks) : "",
      format_bytes(dp.buffer_bytes()), format_bytes(model.activation_bytes()),
      format_bytes(2 * param_bytes + dp.optimizer_bytes() + dp.buffer_bytes() +
                   model.activation_bytes()));

  std::unique_ptr<MetricsWriter> metrics;
  if (root) {
    metrics = std::make_unique<MetricsWriter>(s.run_dir / "metrics.jsonl");
    metrics->write(fmt::format(
        R"({{"kind":"run","event":"{}","step":{},"tokens":{},"params":{},"threads":{},"peak_gflops":{}{}}})",
        resume_from ? "resume" : "start", state.step, state.tokens, model.num_params(),
        cpu_threads(), json_number(peak),
        ranks > 1 ? fmt::format(R"(,"ranks":{},"zero":{})", ranks, s.zero) : ""));
  }

  SignalScope signals;
  SpikeDetector spikes(static_cast<std::size_t>(s.spike_window), state.recent_losses);
  // Rank r reads its slice of every global batch: samples r * G / n ... of
  // each step's G.
  const auto per_rank = static_cast<std::uint64_t>(s.global_batch / ranks);
  BatchLoader loader(train, s.micro_batch, state.next_sample + per_rank * rank, s.prefetch,
                     ranks > 1 ? per_rank : 0, static_cast<std::uint64_t>(s.global_batch));
  const double grad_scale = 1.0 / s.accumulation();
  std::int64_t checkpointed_step = resume_from ? state.step : -1;
  // Whether parameters, moments and state all belong to state.step, for the
  // checkpoint after a time-out (rank_failure.h).
  TrainPhase phase = TrainPhase::Consistent;
  const double elapsed_before = state.elapsed_s;
  const auto loop_start = Clock::now();

  const CheckpointTarget checkpoint_target{s.checkpoint_dir(), s.keep, s.tokenizer,
                                           config.to_toml(), s.model};
  const auto update_state = [&] {
    state.recent_losses = spikes.recent();
    state.elapsed_s = elapsed_before + seconds_since(loop_start);
  };
  const auto save = [&] {
    update_state();
    phase = TrainPhase::Saving;
    // Every rank takes part (a ZeRO-1 rank writes its own shard).
    result.last_checkpoint =
        save_training_checkpoint(*comm, checkpoint_target, state, model.layout(), model.params(),
                                 dp, fault.fails_save(rank, state.step));
    checkpointed_step = state.step;
    phase = TrainPhase::Consistent;
  };
  const auto run_validation = [&] {
    if (valid_batches.empty()) return;
    const auto t0 = Clock::now();
    result.valid_loss = validate(model, valid_batches, progress, *comm);
    if (!root) return;
    metrics->write(
        fmt::format(R"({{"kind":"valid","step":{},"tokens":{},"loss":{},"elapsed_s":{}}})",
                    state.step, state.tokens, json_number(result.valid_loss),
                    json_number(elapsed_before + seconds_since(loop_start))));
    if (progress) {
      fmt::print("validation at step {}: loss {:.4f} (unigram entropy {:.4f}) in {:.1f} s\n",
                 state.step, result.valid_loss, result.unigram_entropy, seconds_since(t0));
      std::fflush(stdout);
    }
  };

  std::int64_t steps_this_run = 0;
  // This rank's micro-batch losses; then every rank's, in rank order.
  std::vector<double> micro_losses(static_cast<std::size_t>(local_micro));
  std::vector<double> all_losses(static_cast<std::size_t>(s.accumulation()));
  const auto grads_final = [&dp](std::int64_t offset) { dp.grads_final(offset); };
  try {
    while (state.step < s.steps) {
      fault.at_step(rank, state.step + 1);
      const auto t0 = Clock::now();
      model.zero_grad();
      for (int micro = 0; micro < local_micro; ++micro) {
        const Batch b = loader.next();
        micro_losses[static_cast<std::size_t>(micro)] =
            model.forward(b.inputs.data(), b.targets.data(), b.batch, b.seq, true,
                          static_cast<float>(grad_scale));
        // The last backward of the step reports finished gradients, so their
        // reduction overlaps the rest of the pass.
        if (ranks > 1 && micro == local_micro - 1) {
          model.backward(grads_final);
        } else {
          model.backward();
        }
      }
      dp.finish_reduction();
      comm->all_gather(std::span<const double>(micro_losses), std::span<double>(all_losses));
      double loss = 0;
      for (const double l : all_losses) loss += l;
      loss /= s.accumulation();
      const double norm = dp.grad_norm();
      const double lr = s.schedule.lr(state.step);
      std::string skip_reason;
      if (!std::isfinite(loss) || !std::isfinite(norm)) {
        skip_reason = "non-finite loss or gradient norm";
      } else if (s.spike_zscore > 0 && spikes.zscore(loss) > s.spike_zscore) {
        skip_reason = fmt::format("loss spike (z-score {:.1f})", spikes.zscore(loss));
      }
      phase = TrainPhase::Updating;
      if (skip_reason.empty()) {
        dp.step(static_cast<float>(lr), clip_scale(norm, s.grad_clip));
      } else {
        ++state.skipped_steps;
        spdlog::warn("step {}: update skipped: {} (loss {}, gradient norm {})", state.step + 1,
                     skip_reason, loss, norm);
      }
      if (std::isfinite(loss)) spikes.add(loss);
      ++state.step;
      ++steps_this_run;
      state.tokens += static_cast<std::uint64_t>(tokens_per_step);
      state.next_sample += static_cast<std::uint64_t>(s.global_batch);
      result.last_loss = loss;
      phase = TrainPhase::Consistent;

      const double step_s = seconds_since(t0);
      const double tok_s = static_cast<double>(tokens_per_step) / step_s;
      const double mfu = flops_per_token * tok_s * 1e-9 / (peak * ranks);
      const double run_s = seconds_since(loop_start);
      if (root) {
        metrics->write(fmt::format(
            R"({{"kind":"train","step":{},"tokens":{},"loss":{},"lr":{},"grad_norm":{},"tokens_per_s":{},"mfu":{},"elapsed_s":{},"skipped":{}}})",
            state.step, state.tokens, json_number(loss), json_number(lr), json_number(norm),
            json_number(tok_s), json_number(mfu), json_number(elapsed_before + run_s),
            skip_reason.empty() ? "false" : "true"));
      }
      if (progress && (state.step % s.log_every == 0 || state.step == s.steps)) {
        const double eta =
            run_s / static_cast<double>(steps_this_run) * static_cast<double>(s.steps - state.step);
        fmt::print(
            "step {:>{}}/{} | loss {:.4f} | lr {:.2e} | norm {:.3f} | {:.0f} tok/s | MFU "
            "{:.1f}% | ETA {}{}\n",
            state.step, fmt::formatted_size("{}", s.steps), s.steps, loss, lr, norm, tok_s,
            100 * mfu, format_duration(eta), skip_reason.empty() ? "" : " | skipped");
        std::fflush(stdout);
      }

      const bool last = state.step == s.steps;
      if (!last && s.eval_every > 0 && state.step % s.eval_every == 0) run_validation();
      if (!last && s.checkpoint_every > 0 && state.step % s.checkpoint_every == 0) save();
      int stop_signal = g_stop_signal;
      bool time_up = s.max_minutes > 0 && seconds_since(wall_start) >= 60 * s.max_minutes;
      if (ranks > 1 && !last) {
        // A signal or the time limit on any rank stops every rank at this step.
        const std::array<double, 2> mine = {static_cast<double>(stop_signal), time_up ? 1.0 : 0.0};
        std::vector<double> all(2 * static_cast<std::size_t>(ranks));
        comm->all_gather(std::span<const double>(mine), std::span<double>(all));
        for (int r = 0; r < ranks; ++r) {
          if (stop_signal == 0)
            stop_signal = static_cast<int>(all[2 * static_cast<std::size_t>(r)]);
          time_up = time_up || all[2 * static_cast<std::size_t>(r) + 1] != 0;
        }
      }
      if (!last && stop_signal != 0) {
        result.stopped = true;
        result.stop_reason = stop_signal == SIGINT ? "SIGINT" : "SIGTERM";
      } else if (!last && options.stop_at_step > 0 && state.step >= options.stop_at_step) {
        result.stopped = true;
        result.stop_reason = fmt::format("--stop-at-step {}", options.stop_at_step);
      } else if (!last && time_up) {
        result.stopped = true;
        result.stop_reason = fmt::format("the {} minute limit", s.max_minutes);
      }
      if (result.stopped) break;
    }

    if (!result.stopped) run_validation();
    if (checkpointed_step != state.step) save();
  } catch (const CommTimeout& e) {
    // A rank stopped answering: save what can be saved, then fail with the
    // time-out's message.
    update_state();
    if (e.first_answering() == rank) quiet.speak();
    TimeoutRescue rescue;
    rescue.phase = phase;
    rescue.state = &state;
    rescue.checkpointed_step = checkpointed_step;
    rescue.last_checkpoint = result.last_checkpoint;
    rescue.zero = s.zero;
    rescue.target = &checkpoint_target;
    rescue.layout = &model.layout();
    rescue.params = model.params();
    rescue.optimizer = &dp.optimizer();
    save_after_timeout(e, *comm, rescue, comm->timeout());
    throw;
  }
  result.steps = state.step;
  result.skipped_steps = state.skipped_steps;
  if (root) {
    metrics->write(fmt::format(R"({{"kind":"run","event":"{}","step":{},"tokens":{}}})",
                               result.stopped ? "stop" : "end", state.step, state.tokens));
  }
  if (progress) {
    if (result.stopped) {
      fmt::print(
          "stopped by {} at step {}/{}; `borealis train` with the same config resumes from "
          "{}\n",
          result.stop_reason, state.step, s.steps, result.last_checkpoint.string());
    } else {
      fmt::print("done: {} steps, {} tokens, {} skipped updates, {} of training\n", state.step,
                 state.tokens, state.skipped_steps,
                 format_duration(elapsed_before + seconds_since(loop_start)));
      if (result.valid_loss >= 0) {
        fmt::print(
            "validation loss {:.4f} nats; unigram entropy of the validation tokens {:.4f} "
            "nats ({:+.4f})\n",
            result.valid_loss, result.unigram_entropy, result.valid_loss - result.unigram_entropy);
      }
      fmt::print("checkpoint: {}\n", result.last_checkpoint.string());
    }
    std::fflush(stdout);
  }
  return result;
}

}  // namespace borealis
