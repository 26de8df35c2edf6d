#include "train/train_config.h"

#include "data/data_list.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <stdexcept>
#include <string_view>

#include "core/error.h"
#include "train/task_eval.h"

namespace borealis {

namespace {

using Int = std::int64_t;

Int get_int(const Config& c, std::string_view key, Int min, Int max = INT32_MAX) {
  const Int v = c.get<Int>(key);
  if (v < min || v > max) {
    throw Error(fmt::format("{} must be in [{}, {}], got {}", key, min, max, v), c.origin(key));
  }
  return v;
}

double get_number(const Config& c, std::string_view key, double min, double max = 1e300) {
  const double v = c.get<double>(key);
  if (!(v >= min && v <= max)) {
    throw Error(fmt::format("{} must be in [{}, {}], got {}", key, min, max, v), c.origin(key));
  }
  return v;
}

// [eval]'s tasks, resolved once to check them (the run resolves them again
// when it reads their data).
void read_task_settings(const Config& c, TaskEvalSettings& t) {
  t.names = c.get<std::vector<std::string>>("eval.tasks");
  for (const std::string& f : c.get<std::vector<std::string>>("eval.task_files")) {
    t.task_files.emplace_back(f);
  }
  t.data_dir = c.get<std::string>("eval.data_dir");
  t.limit = static_cast<std::size_t>(get_int(c, "eval.limit", 0, INT64_MAX));
  t.num_fewshot = static_cast<int>(get_int(c, "eval.num_fewshot", 0, 1 << 16));
  if (t.names.empty()) {
    if (!t.task_files.empty()) {
      throw Error("eval.task_files is set but eval.tasks names no task to run",
                  c.origin("eval.tasks"));
    }
    return;
  }
  TaskSet set;
  try {
    set = resolve_training_tasks(t);
  } catch (const Error& e) {
    // A task file's own errors name the file; an unknown name is the key's.
    if (e.where() != "--tasks") throw;
    throw Error("eval.tasks: " + e.message(), c.origin("eval.tasks"));
  }
  const bool builtin = std::any_of(set.tasks.begin(), set.tasks.end(), [](const TaskSpec& task) {
    return !task.split_files.contains(task.eval_split());
  });
  if (builtin && !std::filesystem::is_directory(t.data_dir)) {
    throw Error(fmt::format("eval.data_dir {} is not a directory (the built-in tasks read "
                            "DIR/<task>/<split>.jsonl)",
                            t.data_dir.string()),
                c.origin("eval.data_dir"));
  }
}

}  // namespace

StepRange parse_step_range(std::string_view text, const std::string& where) {
  const auto number = [&](std::string_view digits) {
    std::int64_t v = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
    if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() || v < 1) {
      throw Error(fmt::format("train.skip_steps: \"{}\" is not a step (from 1) or a range A-B "
                              "of steps",
                              text),
                  where);
    }
    return v;
  };
  const std::size_t dash = text.find('-');
  StepRange r;
  r.first = number(text.substr(0, dash));
  r.last = dash == std::string_view::npos ? r.first : number(text.substr(dash + 1));
  if (r.last < r.first) {
    throw Error(fmt::format("train.skip_steps: the range \"{}\" ends before it starts", text),
                where);
  }
  return r;
}

bool TrainSettings::skips(std::int64_t step) const {
  return std::any_of(skip_steps.begin(), skip_steps.end(),
                     [step](const StepRange& r) { return step >= r.first && step <= r.last; });
}

ConfigSchema train_config_schema() {
  ConfigSchema s;
  s.add("model.preset", std::string("llama-20m"), "model preset to start from",
        model_preset_names());
  s.add("model.n_layer", Int{0}, "transformer blocks (0: the preset's)");
  s.add("model.n_head", Int{0}, "attention heads (0: the preset's)");
  s.add("model.n_kv_head", Int{0},
        "key/value heads, for grouped-query attention (0: the preset's)");
  s.add("model.d_model", Int{0}, "model width (0: the preset's)");
  s.add("model.d_ff", Int{0}, "MLP hidden width (0: the preset's)");
  s.add("model.max_seq", Int{0}, "longest context (0: the preset's)");
  s.add("model.embeddings", std::string("preset"),
        "tied or untied input and output embeddings (llama only)", {"preset", "tied", "untied"});
  s.add("model.norm_eps", 0.0, "LayerNorm / RMSNorm epsilon (0: the preset's)");
  s.add("model.rope_theta", 0.0, "rotary embedding base (0: the preset's)");

  s.add("data.data_list", std::string(""), "data list file: lines 'weight prefix [corpus]'");
  s.add("data.tokenizer", std::string(""),
        "the tokenizer the datasets were prepared with (copied into every checkpoint)");
  s.add("data.seq_len", Int{256}, "tokens per training sequence");
  s.add("data.split", std::vector<double>{98, 1, 1}, "train, valid, test shares of each file");
  s.add("data.order", std::string("fast"),
        "sample order of the mixture: fast, or megatron (Megatron-DeepSpeed's, bit for bit)",
        {"fast", "megatron"});
  s.add("data.cache_dir", std::string(""),
        "where the mixture index is cached (default RUN_DIR/index-cache)");
  s.add("data.prefetch", Int{4}, "batches the loader prepares ahead");

  s.add("optim.lr", 6e-4, "peak learning rate");
  s.add("optim.lr_min", 6e-5, "final learning rate");
  s.add("optim.warmup_steps", Int{0}, "linear warm-up steps");
  s.add("optim.decay", std::string("cosine"), "learning-rate schedule after warm-up",
        {"cosine", "linear", "constant", "wsd"});
  s.add("optim.decay_steps", Int{0}, "wsd: length of the final decay");
  s.add("optim.beta1", 0.9, "AdamW beta1");
  s.add("optim.beta2", 0.95, "AdamW beta2");
  s.add("optim.eps", 1e-8, "AdamW epsilon");
  s.add("optim.weight_decay", 0.1, "decoupled weight decay (matrices)");
  s.add("optim.decay_norms", false, "apply weight decay to norm weights too");
  s.add("optim.decay_biases", false, "apply weight decay to biases too");
  s.add("optim.decay_embeddings", false, "apply weight decay to embeddings too");
  s.add("optim.grad_clip", 1.0, "clip the global gradient norm to this (0: off)");

  s.add("train.run_dir", std::string("runs/run"), "directory for metrics, config and checkpoints");
  s.add("train.steps", Int{1000}, "optimizer steps");
  s.add("train.micro_batch", Int{8}, "sequences per forward/backward pass");
  s.add("train.global_batch", Int{0},
        "sequences per optimizer step, a multiple of micro_batch (0: micro_batch)");
  s.add("train.seed", Int{1234}, "seed of the initial weights and the data order");
  s.add("train.log_every", Int{1}, "print a step line every N steps");
  s.add("train.max_minutes", 0.0,
        "stop after this many minutes with a checkpoint, as on a signal (0: no limit)");
  s.add("train.spike_zscore", 0.0,
        "skip the update when the loss is this many standard deviations above the recent mean "
        "(0: off)");
  s.add("train.spike_window", Int{128}, "recent losses the spike rule looks at");
  s.add("train.peak_gflops", 0.0,
        "peak GFLOP/s for MFU (0: measured at start-up at the model's GEMM shapes: the "
        "backend's matmul in fp32, cuBLAS's bf16 GEMM with train.precision = \"bf16\")");
  s.add("train.device", std::string("cpu"),
        "where the steps run: \"cpu\", or \"cuda\" (builds with the CUDA backend: a GPU per "
        "rank, by local rank; data-parallel ranks sum gradients over NCCL; no tensor or "
        "pipeline parallelism); checkpoints are the same on both, so a run resumes on either");
  s.add("train.precision", std::string("fp32"),
        "what the matmuls multiply: \"fp32\", or \"bf16\" (bf16 operands, fp32 accumulation; "
        "parameters, gradients, optimizer state, norms and the loss stay fp32; "
        "train.device = \"cuda\" only); checkpoints hold the fp32 weights either way");
  s.add("train.stop_file", std::string(""),
        "when this file appears, every rank stops after the current step with a checkpoint, as "
        "on a signal, and the run removes the file (relative paths: in train.run_dir; empty: "
        "off)");
  s.add("train.skip_steps", std::vector<std::string>{},
        "steps whose data is read and dropped without an update, as \"N\" or \"A-B\" (from 1): "
        "data known to be bad, skipped after a restart; the order of all other data is kept");

  s.add("checkpoint.every", Int{0}, "write a checkpoint every N steps (0: only at the end)");
  s.add("checkpoint.keep", Int{3}, "checkpoints to keep (the newest)");
  s.add("checkpoint.async", true,
        "write checkpoints from a copy in host memory on a background thread while training "
        "goes on (false: training waits for the write)");

  s.add("eval.every", Int{0}, "validation loss every N steps (0: only at the end)");
  s.add("eval.batches", Int{8}, "validation micro-batches (0: no validation)");
  s.add("eval.tasks", std::vector<std::string>{},
        "benchmark tasks scored at every validation by rank 0: built-in tasks or groups "
        "(arc_easy, mmlu, ...) or the names of eval.task_files' tasks");
  s.add("eval.task_files", std::vector<std::string>{},
        "custom tasks (TOML files, as for borealis eval --task-file)");
  s.add("eval.data_dir", std::string("."),
        "folder of the built-in tasks' data: DIR/<task>/<split>.jsonl");
  s.add("eval.limit", Int{0}, "first N docs of each task (0: all)");
  s.add("eval.num_fewshot", Int{0}, "few-shot examples per prompt");

  s.add("dist.tensor_parallel", Int{1},
        "ranks per tensor-parallel group (Megatron-LM): attention heads, MLP units and "
        "vocabulary split across them; the data-parallel replicas are ranks / (tensor_parallel x "
        "pipeline_parallel)");
  s.add("dist.pipeline_parallel", Int{1},
        "pipeline stages (Megatron-LM): the layers split into this many equal stages, stage s on "
        "the s-th block of ranks / pipeline_parallel, each step's micro-batches (global_batch / "
        "(micro_batch x data "
        "replicas)) run through them in the 1F1B schedule");
  s.add("dist.sequence_parallel", false,
        "with tensor_parallel > 1: also cut the residual stream and norms along the sequence "
        "(reduce-scatter + all-gather instead of allreduce; less activation memory)");
  s.add("dist.zero", Int{0},
        "ZeRO stage with several ranks: 0 (every rank holds the optimizer state) or 1 (AdamW "
        "moments sharded over the ranks)");
  s.add("dist.bucket_mb", 25.0, "MiB of gradients per allreduce / reduce-scatter");
  s.add("dist.timeout_s", 300.0,
        "a collective that waits longer fails the run, naming the ranks that do not answer");
  s.add("dist.reduce", std::string("ordered"),
        "gradient reduction over MPI: ordered (bit-reproducible) or native (the MPI "
        "library's); GPU ranks use NCCL's",
        {"ordered", "native"});
  s.add("dist.straggler_every", Int{100},
        "every N steps rank 0 gathers each rank's compute, data and communication time and "
        "reports the slowest ranks (0: off)");
  s.add("dist.straggler_factor", 1.5,
        "warn about a rank whose compute and data time is this many times the median rank's");
  return s;
}

TrainSettings read_train_settings(const Config& c) {
  TrainSettings t;
  t.preset = c.get<std::string>("model.preset");

  t.data_list = c.get<std::string>("data.data_list");
  if (t.data_list.empty()) {
    throw Error("data.data_list is required: a file of lines 'weight prefix [corpus]'",
                "train config");
  }
  t.tokenizer = c.get<std::string>("data.tokenizer");
  if (t.tokenizer.empty()) throw Error("data.tokenizer is required", "train config");
  t.seq_len = static_cast<int>(get_int(c, "data.seq_len", 1, 1 << 20));
  const auto& split = c.get<std::vector<double>>("data.split");
  if (split.size() != 3) {
    throw Error(fmt::format("data.split needs 3 shares (train, valid, test), got {}", split.size()),
                c.origin("data.split"));
  }
  for (int i = 0; i < 3; ++i) {
    if (!(split[i] >= 0)) throw Error("data.split shares must be >= 0", c.origin("data.split"));
    t.split[i] = split[i];
  }
  if (!(t.split[0] > 0))
    throw Error("data.split gives nothing to train on", c.origin("data.split"));
  t.order = c.get<std::string>("data.order");
  t.cache_dir = c.get<std::string>("data.cache_dir");
  t.prefetch = static_cast<int>(get_int(c, "data.prefetch", 1, 64));

  t.adamw.beta1 = static_cast<float>(get_number(c, "optim.beta1", 0, 0.999999));
  t.adamw.beta2 = static_cast<float>(get_number(c, "optim.beta2", 0, 0.999999));
  t.adamw.eps = static_cast<float>(get_number(c, "optim.eps", 0));
  t.adamw.weight_decay = static_cast<float>(get_number(c, "optim.weight_decay", 0));
  t.adamw.decay_norms = c.get<bool>("optim.decay_norms");
  t.adamw.decay_biases = c.get<bool>("optim.decay_biases");
  t.adamw.decay_embeddings = c.get<bool>("optim.decay_embeddings");
  t.grad_clip = get_number(c, "optim.grad_clip", 0);

  t.run_dir = c.get<std::string>("train.run_dir");
  if (t.run_dir.empty()) throw Error("train.run_dir must not be empty", c.origin("train.run_dir"));
  t.steps = get_int(c, "train.steps", 1, INT64_MAX);
  t.micro_batch = static_cast<int>(get_int(c, "train.micro_batch", 1, 1 << 16));
  t.global_batch = static_cast<int>(get_int(c, "train.global_batch", 0, 1 << 24));
  if (t.global_batch == 0) t.global_batch = t.micro_batch;
  if (t.global_batch % t.micro_batch != 0) {
    throw Error(fmt::format("train.global_batch {} is not a multiple of train.micro_batch {}",
                            t.global_batch, t.micro_batch),
                c.origin("train.global_batch"));
  }
  t.seed = static_cast<std::uint64_t>(get_int(c, "train.seed", 0, INT64_MAX));
  t.log_every = static_cast<int>(get_int(c, "train.log_every", 1));
  t.max_minutes = get_number(c, "train.max_minutes", 0);
  t.spike_zscore = get_number(c, "train.spike_zscore", 0);
  t.spike_window = static_cast<int>(get_int(c, "train.spike_window", 2, 1 << 20));
  t.peak_gflops = get_number(c, "train.peak_gflops", 0);
  t.device = c.get<std::string>("train.device");
  try {
    t.precision = parse_precision(c.get<std::string>("train.precision"));
  } catch (const std::invalid_argument& e) {
    throw Error(e.what(), c.origin("train.precision"));
  }
  t.stop_file = c.get<std::string>("train.stop_file");
  if (!t.stop_file.empty() && t.stop_file.is_relative()) t.stop_file = t.run_dir / t.stop_file;
  for (const std::string& range : c.get<std::vector<std::string>>("train.skip_steps")) {
    t.skip_steps.push_back(parse_step_range(range, c.origin("train.skip_steps")));
  }

  t.checkpoint_every = get_int(c, "checkpoint.every", 0, INT64_MAX);
  t.keep = static_cast<int>(get_int(c, "checkpoint.keep", 1, 1 << 20));
  t.checkpoint_async = c.get<bool>("checkpoint.async");
  t.eval_every = get_int(c, "eval.every", 0, INT64_MAX);
  t.eval_batches = static_cast<int>(get_int(c, "eval.batches", 0, 1 << 20));
  read_task_settings(c, t.tasks);
  t.tensor_parallel = static_cast<int>(get_int(c, "dist.tensor_parallel", 1, 4096));
  t.sequence_parallel = c.get<bool>("dist.sequence_parallel");
  t.pipeline_parallel = static_cast<int>(get_int(c, "dist.pipeline_parallel", 1, 4096));
  t.zero = static_cast<int>(get_int(c, "dist.zero", 0, 1));
  t.bucket_mb = get_number(c, "dist.bucket_mb", 1e-6, 1 << 20);
  t.timeout_s = get_number(c, "dist.timeout_s", 0.01, 1e7);
  t.reduce = c.get<std::string>("dist.reduce");
  t.straggler_every = get_int(c, "dist.straggler_every", 0, INT64_MAX);
  t.straggler_factor = get_number(c, "dist.straggler_factor", 1);

  t.schedule.decay = parse_lr_decay(c.get<std::string>("optim.decay"));
  t.schedule.lr_max = get_number(c, "optim.lr", 0);
  t.schedule.lr_min = get_number(c, "optim.lr_min", 0);
  t.schedule.warmup_steps = get_int(c, "optim.warmup_steps", 0, INT64_MAX);
  t.schedule.decay_steps = get_int(c, "optim.decay_steps", 0, INT64_MAX);
  t.schedule.total_steps = t.steps;
  try {
    t.schedule.validate();
  } catch (const Error& e) {
    throw Error(e.message(), "[optim] with train.steps");
  }
  return t;
}

ModelConfig resolve_model(const Config& c, int vocab_size) {
  ModelConfig m = model_preset(c.get<std::string>("model.preset"));
  const auto override_int = [&](const char* key, int& field) {
    const Int v = get_int(c, key, 0, 1 << 24);
    if (v != 0) field = static_cast<int>(v);
  };
  override_int("model.n_layer", m.n_layer);
  override_int("model.n_head", m.n_head);
  override_int("model.n_kv_head", m.n_kv_head);
  override_int("model.d_model", m.d_model);
  override_int("model.d_ff", m.d_ff);
  override_int("model.max_seq", m.max_seq);
  if (m.family == ModelFamily::kGpt2 && c.is_default("model.n_kv_head")) m.n_kv_head = m.n_head;
  const std::string& embeddings = c.get<std::string>("model.embeddings");
  if (embeddings != "preset") m.tied_embeddings = embeddings == "tied";
  if (const double eps = get_number(c, "model.norm_eps", 0); eps > 0) {
    m.norm_eps = static_cast<float>(eps);
  }
  if (const double theta = get_number(c, "model.rope_theta", 0); theta > 0) {
    m.rope_theta = static_cast<float>(theta);
  }
  m.vocab_size = vocab_size;
  m.padded_vocab = pad_vocab(vocab_size);
  bool changed = false;
  for (const auto& key : c.schema().keys()) {
    if (key.path.starts_with("model.") && key.path != "model.preset" && !c.is_default(key.path)) {
      changed = true;
    }
  }
  if (changed) m.name = "custom (" + m.name + ")";
  try {
    m.validate();
  } catch (const Error& e) {
    throw Error(e.message(), "[model] of the train config");
  }
  return m;
}

bool is_trajectory_key(const std::string& path) {
  if (path.starts_with("model.") || path.starts_with("optim.")) return true;
  return path == "data.data_list" || path == "data.tokenizer" || path == "data.seq_len" ||
         path == "data.split" || path == "data.order" || path == "train.micro_batch" ||
         path == "train.global_batch" || path == "train.seed" || path == "train.spike_zscore" ||
         path == "train.spike_window";
}

MixOptions mixture_options(const TrainSettings& s) {
  MixOptions mix;
  mix.list = read_data_list(s.data_list);
  mix.seq_len = static_cast<std::uint64_t>(s.seq_len);
  mix.samples = static_cast<std::uint64_t>(s.steps) * static_cast<std::uint64_t>(s.global_batch);
  mix.seed = s.seed;
  mix.split = s.split;
  mix.order = s.order == "megatron" ? MixOrder::megatron : MixOrder::fast;
  mix.cache_dir = s.cache_dir.empty() ? s.run_dir / "index-cache" : s.cache_dir;
  return mix;
}

}  // namespace borealis
