#include "train/trainer.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/text.h"
#include "core/threads.h"
#include "data/data_list.h"
#include "data/mixture.h"
#include "dist/communicator.h"
#include "dist/restart.h"
#include "kernels/backend.h"
#include "kernels/make_backend.h"
#include "model/model.h"
#include "optim/data_parallel.h"
#include "tokenizer/tokenizer.h"
#include "train/checkpoint.h"
#include "train/dist_checkpoint.h"
#include "train/loader.h"
#include "train/metrics_writer.h"
#include "train/parallel_groups.h"
#include "train/pipeline.h"
#include "train/rank_failure.h"
#include "train/task_eval.h"
#include "train/train_bench.h"
#include "train/train_config.h"
#include "train/training_loop.h"
#include "train/validation.h"
#include "train/whole_model.h"

namespace borealis {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

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

// The communicator of the run: options.comm, or one made from the launch
// environment (kept in `own`); either way with [dist]'s time-out and
// reduction.
Communicator& open_communicator(const TrainSettings& s, const TrainRunOptions& options,
                                std::unique_ptr<Communicator>& own) {
  const auto timeout = std::chrono::milliseconds(static_cast<std::int64_t>(s.timeout_s * 1000));
  const ReduceAlgorithm algorithm =
      s.reduce == "native" ? ReduceAlgorithm::Native : ReduceAlgorithm::Ordered;
  Communicator* comm = options.comm;
  if (comm == nullptr) {
    CommOptions co;
    co.timeout = timeout;
    co.algorithm = algorithm;
    own = make_communicator(co);
    comm = own.get();
  }
  comm->set_timeout(timeout);
  comm->set_reduce_algorithm(algorithm);
  return *comm;
}

// Every rank must run the same configuration and resume from the same step
// (they read the same files); each sees what all others have.
void check_ranks_agree(const Config& config, const TrainSettings& s,
                       const std::optional<CheckpointInfo>& resume_from, Communicator& comm) {
  const std::uint64_t h = hash64(config.to_toml());
  const std::array<double, 3> mine = {
      resume_from ? static_cast<double>(resume_from->state.step) : -1.0,
      static_cast<double>(h >> 32), static_cast<double>(h & 0xffffffffu)};
  std::vector<double> all(3 * static_cast<std::size_t>(comm.size()));
  comm.all_gather(std::span<const double>(mine), std::span<double>(all));
  for (std::size_t r = 1; r < static_cast<std::size_t>(comm.size()); ++r) {
    const std::string who = fmt::format("rank {} ({})", r, comm.host(static_cast<int>(r)));
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

// The run's plan in the log: model, steps, ranks and memory.
// `device_comm`: the backend of the communicator between GPUs, or "".
void log_plan(const TrainSettings& s, ParallelGroups& groups, const Model<float>& model,
              const DataParallel& dp, double peak, const std::string& device_comm) {
  const ParallelLayout& layout = groups.layout();
  const int ranks = layout.world;
  spdlog::info("model {} ({}, {:.2f}M parameters), {} threads, {} GEMM peak {:.1f} GFLOP/s",
               s.model.name, family_name(s.model.family), ParamLayout(s.model).total() / 1e6,
               cpu_threads(), precision_name(s.precision), peak);
  spdlog::info("{} steps of {} sequences x {} tokens ({} micro-batches of {}), {} tokens in all",
               s.steps, s.global_batch, s.seq_len, s.accumulation(), s.micro_batch,
               s.steps * static_cast<std::int64_t>(s.global_batch) * s.seq_len);
  if (ranks > 1) {
    std::string hosts;
    for (int r = 0; r < ranks; ++r) hosts += (r ? ", " : "") + groups.world().host(r);
    spdlog::info("layout: {} ({})", describe_layout(layout), hosts);
    if (layout.tensor > 1) {
      spdlog::info(
          "tensor parallel: each rank holds 1/{} of the heads, MLP units and vocabulary "
          "({:.2f}M parameters); per layer and micro-batch {}",
          layout.tensor, model.num_params() / 1e6,
          layout.sequence ? "4 reduce-scatters and 6 all-gathers of the activations, residual "
                            "stream and norms cut along the sequence"
                          : "4 allreduces of the activations");
    }
    if (layout.pipeline > 1) {
      const int m = s.accumulation() / layout.data;
      spdlog::info(
          "pipeline parallel: {} stages of {} layer(s) each, activations and their gradients "
          "sent between neighbouring stages; {} micro-batches per step in the 1F1B schedule, "
          "ideal bubble (P - 1) / m = {:.1f}% of the compute time{}",
          layout.pipeline, s.model.n_layer / layout.pipeline, m,
          100 * ideal_bubble(layout.pipeline, m),
          m < layout.pipeline ? "; fewer micro-batches than stages leave most stages idle: "
                                "raise train.global_batch or lower train.micro_batch"
                              : "");
    }
    spdlog::info(
        "data parallel: {} replicas, {} micro-batches of {} per replica and step; ZeRO-{}, {} "
        "gradient buckets of up to {} MiB, {}, time-out {} s",
        layout.data, s.accumulation() / layout.data, s.micro_batch, s.zero, dp.buckets(),
        s.bucket_mb,
        device_comm.empty()
            ? fmt::format("{} reduction", s.reduce)
            : fmt::format("gradients between GPUs over {} (in its summation order; dist.reduce "
                          "applies to MPI)",
                          device_comm),
        s.timeout_s);
  }
  const std::size_t param_bytes = static_cast<std::size_t>(model.num_params()) * sizeof(float);
  spdlog::info(
      "memory per rank: parameters {}, gradients {}, optimizer {}{}, communication buffers {}, "
      "activations {}; {} in all",
      format_bytes(param_bytes), format_bytes(param_bytes), format_bytes(dp.optimizer_bytes()),
      layout.data > 1 && s.zero == 1 ? fmt::format(" (a 1/{} shard)", layout.data) : "",
      format_bytes(dp.buffer_bytes()), format_bytes(model.activation_bytes()),
      format_bytes(2 * param_bytes + dp.optimizer_bytes() + dp.buffer_bytes() +
                   model.activation_bytes()));
}

// The console's last lines: how the run ended and where it can go on.
void report_end(const TrainSettings& s, const TrainState& state, const TrainRunResult& result,
                double elapsed_s) {
  if (result.stopped) {
    fmt::print(
        "stopped by {} at step {}/{}; `borealis train` with the same config resumes from "
        "{}\n",
        result.stop_reason, state.step, s.steps, result.last_checkpoint.string());
  } else {
    fmt::print("done: {} steps, {} tokens, {} skipped updates, {} of training\n", state.step,
               state.tokens, state.skipped_steps, format_duration(elapsed_s));
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

// What the run tells `borealis launch --max-restarts` (dist/restart.h) when
// it fails: rank, host and the steps completed.
struct FailureReport {
  int rank = 0;
  std::string host;
  std::int64_t step = -1;
  bool sent = false;

  // Once: a time-out is reported before the rescue checkpoint, which may end
  // the job (MPI_Abort) before the error leaves run_training.
  void send(const std::exception& e) {
    if (!sent) report_to_launcher(line(e));
    sent = true;
  }

  std::string line(const std::exception& e) const {
    const auto* error = dynamic_cast<const Error*>(&e);
    const nlohmann::json j = {
        {"event", "error"},
        {"rank", rank},
        {"host", host},
        {"step", step},
        {"timeout", dynamic_cast<const CommTimeout*>(&e) != nullptr},
        {"error", error != nullptr && !error->where().empty()
                      ? fmt::format("{} ({})", error->message(), error->where())
                      : std::string(e.what())}};
    return j.dump();
  }
};

TrainRunResult train_run(const Config& config, const TrainRunOptions& options,
                         FailureReport& failure) {
  const auto wall_start = Clock::now();
  TrainSettings s = read_train_settings(config);
  std::unique_ptr<Communicator> own_comm;
  Communicator& comm = open_communicator(s, options, own_comm);
  const int ranks = comm.size();
  const bool root = comm.rank() == 0;
  failure.rank = comm.rank();
  failure.host = comm.host(comm.rank());
  QuietRank quiet(!root);
  const InjectedFault fault = InjectedFault::from_env();
  const Tokenizer tokenizer = Tokenizer::load(s.tokenizer);
  s.model = resolve_model(config, static_cast<int>(tokenizer.vocab_size()));
  // Tensor groups of dist.tensor_parallel ranks, data-parallel replicas of
  // them, in dist.pipeline_parallel stages.
  ParallelLayout layout = parallel_layout(
      ranks, comm.rank(), s.tensor_parallel, s.pipeline_parallel, s.model,
      config.origin(s.pipeline_parallel > 1 ? "dist.pipeline_parallel" : "dist.tensor_parallel"));
  if (s.sequence_parallel && layout.tensor == 1) {
    spdlog::warn("dist.sequence_parallel is ignored: it needs dist.tensor_parallel > 1");
  } else if (s.sequence_parallel && s.seq_len % layout.tensor != 0) {
    throw Error(fmt::format("dist.sequence_parallel cuts each sequence into {} parts, but "
                            "data.seq_len {} does not divide by dist.tensor_parallel = {}",
                            layout.tensor, s.seq_len, layout.tensor),
                config.origin("dist.sequence_parallel"));
  } else {
    layout.sequence = s.sequence_parallel;
  }
  ParallelGroups groups(comm, layout);
  const int replicas = groups.layout().data;
  if (replicas > 1 && s.global_batch % (s.micro_batch * replicas) != 0) {
    throw Error(fmt::format("train.global_batch {} is not divisible by train.micro_batch {} x {} "
                            "data-parallel replicas: every replica needs the same number of "
                            "micro-batches",
                            s.global_batch, s.micro_batch, replicas),
                config.origin("train.global_batch"));
  }
  if (s.seq_len > s.model.max_seq) {
    throw Error(fmt::format("data.seq_len {} is longer than the model's max_seq {}", s.seq_len,
                            s.model.max_seq),
                config.origin("data.seq_len"));
  }
  const int L = s.seq_len;
  // Every rank reads the tasks' data, so that bad data stops every rank now;
  // only rank 0 keeps it.
  std::unique_ptr<TrainingTasks> tasks;
  if (s.tasks.enabled()) {
    tasks = std::make_unique<TrainingTasks>(s.tasks, tokenizer);
    if (!root) tasks.reset();
    std::string names;
    for (const std::string& n : s.tasks.names) names += (names.empty() ? "" : ", ") + n;
    spdlog::info("benchmark tasks at every validation: {} ({}-shot, {})", names,
                 s.tasks.num_fewshot,
                 s.tasks.limit == 0 ? std::string("every doc")
                                    : fmt::format("the first {} docs of each", s.tasks.limit));
  }

  std::optional<CheckpointInfo> resume_from = find_resume_point(s, options);
  if (resume_from) check_resume_config(config, *resume_from);
  if (ranks > 1) check_ranks_agree(config, s, resume_from, comm);
  fs::create_directories(s.run_dir);
  if (root) write_file_atomic(s.run_dir / "config.toml", config.to_toml());

  // Data: the train mixture holds exactly the samples of all steps.
  const MixOptions mix = mixture_options(s);
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
  // Data-parallel ranks on one node take a GPU each.
  const int gpu = s.device == "cuda" ? cuda_device_of_local_rank() : 0;
  const std::unique_ptr<Backend<float>> backend =
      options.backend ? options.backend()
                      : make_backend(s.device, "train.device", s.precision, "train.precision", gpu);
  // Gradients and parameters in device memory move over NCCL.
  std::unique_ptr<Communicator> device_comm;
  if (!backend->host_memory() && ranks > 1) {
    if (layout.tensor > 1 || layout.pipeline > 1) {
      throw Error(fmt::format("train.device = \"{}\" runs data parallelism only: tensor and "
                              "pipeline parallelism exchange host memory over MPI "
                              "(dist.tensor_parallel = {}, dist.pipeline_parallel = {})",
                              s.device, layout.tensor, layout.pipeline),
                  "train.device");
    }
    device_comm = options.device_comm ? options.device_comm(groups.data(), gpu)
                                      : make_gpu_communicator(groups.data(), gpu, "train.device");
  }
  Model<float> model(s.model, *backend, &groups.model_group(), groups.stage());
  std::unique_ptr<Pipeline<float>> pipeline;
  if (layout.pipeline > 1) {
    pipeline =
        std::make_unique<Pipeline<float>>(groups.pipeline(), model, s.accumulation() / replicas);
  }
  // A pipeline stage keeps the activations of the micro-batches in flight.
  model.reserve(s.micro_batch, L, pipeline ? pipeline->slots() : 1);
  DataParallelOptions dpo;
  dpo.zero = s.zero;
  dpo.bucket_bytes = static_cast<std::size_t>(s.bucket_mb * (1 << 20));
  DataParallel dp(groups.data(), *backend, model.layout(), s.adamw, dpo, model.params(),
                  model.grads(), device_comm.get());
  dp.set_model_parallel(groups.tensor(), groups.pipeline(), model.layout());
  TrainState state;
  if (resume_from) {
    if (model_config_to_json(resume_from->model) != model_config_to_json(s.model)) {
      throw Error("the checkpoint's model differs from the configured one",
                  resume_from->dir.string());
    }
    // The parameters of this rank's part and its range of the moments
    // only, whatever the layout of the run that wrote the checkpoint.
    load_training_checkpoint(*resume_from, model.layout(), model.params(), dp);
    state = resume_from->state;
    spdlog::info("resuming from {} (step {}, {} tokens)", resume_from->dir.string(), state.step,
                 state.tokens);
  } else {
    model.init(s.seed);
  }
  result.first_step = state.step;
  failure.step = state.step;
  if (root) {
    report_to_launcher(nlohmann::json{
        {"event", "start"}, {"run_dir", fs::absolute(s.run_dir).string()}, {"step", state.step}}
                           .dump());
  }
  result.skipped_steps = state.skipped_steps;
  result.last_checkpoint = resume_from ? resume_from->dir : fs::path();

  double peak = s.peak_gflops;
  if (peak == 0 && !root) peak = 1;  // only rank 0 reports MFU
  if (peak == 0) {
    auto shapes = model_gemm_shapes(s.model, s.micro_batch * L, model.loss_chunk_rows());
    if (s.precision == Precision::kBf16) {
      peak = bf16_gemm_peak_gflops(shapes, "train.precision");  // as bench train's bf16 MFU
    } else {
      for (auto& g : shapes) {
        time_gemm(*backend, g);
        peak = std::max(peak, g.gflops);
      }
    }
  }
  log_plan(s, groups, model, dp, peak, device_comm ? device_comm->backend() : "");

  std::unique_ptr<MetricsWriter> metrics;
  if (root) {
    metrics = std::make_unique<MetricsWriter>(s.run_dir / "metrics.jsonl");
    metrics->write(fmt::format(
        R"({{"kind":"run","event":"{}","step":{},"tokens":{},"params":{},"threads":{},"peak_gflops":{}{}}})",
        resume_from ? "resume" : "start", state.step, state.tokens, model.num_params(),
        cpu_threads(), json_number(peak),
        ranks > 1
            ? fmt::format(R"(,"ranks":{},"tensor_parallel":{},"pipeline_parallel":{},"zero":{})",
                          ranks, groups.layout().tensor, groups.layout().pipeline, s.zero)
            : ""));
  }

  const CheckpointTarget checkpoint_target{s.checkpoint_dir(), s.keep, s.tokenizer,
                                           config.to_toml(), s.model};
  const RunParts parts{s,
                       options,
                       comm,
                       groups,
                       model,
                       pipeline.get(),
                       dp,
                       train,
                       valid_batches,
                       metrics.get(),
                       tasks.get(),
                       checkpoint_target,
                       fault,
                       peak,
                       train_flops_per_token(s.model, ParamLayout(s.model).total(), L),
                       wall_start};
  TrainingLoop loop(parts, state, result, resume_from.has_value());
  try {
    loop.run();
  } catch (const CommTimeout& e) {
    // A rank stopped answering: save what can be saved, then fail with the
    // time-out's message.
    failure.step = state.step;
    failure.send(e);
    if (e.first_answering() == comm.rank()) quiet.speak();
    loop.save_after_timeout(e);
    throw;
  } catch (...) {
    failure.step = state.step;
    throw;
  }
  result.steps = state.step;
  result.skipped_steps = state.skipped_steps;
  if (root) {
    metrics->write(fmt::format(R"({{"kind":"run","event":"{}","step":{},"tokens":{}}})",
                               result.stopped ? "stop" : "end", state.step, state.tokens));
  }
  if (options.progress && root) report_end(s, state, result, loop.elapsed_s());
  return result;
}

}  // namespace

TrainRunResult run_training(const Config& config, const TrainRunOptions& options) {
  FailureReport failure;
  try {
    return train_run(config, options, failure);
  } catch (const std::exception& e) {
    failure.send(e);
    throw;
  }
}

}  // namespace borealis
