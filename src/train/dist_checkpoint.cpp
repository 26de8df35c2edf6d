#include "train/dist_checkpoint.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "model/model_parts.h"

namespace borealis {

namespace fs = std::filesystem;

namespace {

// One rank's outcome of a phase of the save, exchanged as bytes.
struct Report {
  std::uint64_t ok = 0;
  std::int64_t begin = 0, end = 0;  // the shard's range
  std::uint64_t bytes = 0;          // the shard file's size
  char xxh3_128[40] = {};           // and checksum
  char text[440] = {};              // the error, or the temporary directory's name
  // A checkpoint in parts: this rank's part, and what it wrote of it.
  std::int32_t tensor_rank = 0, stage = 0;
  std::int32_t wrote_model = 0, wrote_moments = 0;
  std::int64_t part_total = 0;
  std::uint64_t model_bytes = 0;
  char model_xxh3_128[40] = {};
};
static_assert(std::is_trivially_copyable_v<Report>);

void set_text(Report& r, const std::string& text) {
  const std::size_t n = std::min(text.size(), sizeof(r.text) - 1);
  std::memcpy(r.text, text.data(), n);
  r.text[n] = '\0';
}

std::string text_of(const char* chars, std::size_t size) {
  return std::string(chars, strnlen(chars, size));
}

std::string failure_text(int rank, const Communicator& comm, const Report& r) {
  return fmt::format("rank {} ({}): {}", rank, comm.host(rank), text_of(r.text, sizeof(r.text)));
}

// Runs `work` and reports whether it succeeded, with the error's text.
template <class Work>
Report attempt(Work&& work) {
  Report r;
  try {
    work(r);
    r.ok = 1;
  } catch (const Error& e) {
    r.ok = 0;
    set_text(r, e.where().empty() ? e.message() : e.message() + " (" + e.where() + ")");
  } catch (const std::exception& e) {
    r.ok = 0;
    set_text(r, e.what());
  }
  return r;
}

// Rank 0's outcome, known to every rank.
Report from_root(Communicator& comm, Report r) {
  comm.broadcast(std::span<Report>(&r, 1), 0);
  return r;
}

void copy_hex(const std::string& hex, char (&to)[40]) {
  std::memcpy(to, hex.data(), std::min(hex.size(), sizeof(to) - 1));
}

void remove_quietly(const fs::path& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (ec) spdlog::warn("could not remove {}: {}", dir.string(), ec.message());
}

[[noreturn]] void fail(std::int64_t step, const std::string& why, const fs::path& where) {
  throw Error(fmt::format("the checkpoint of step {} was not written: {}", step, why),
              where.string());
}

// The manifest of a checkpoint in parts from every rank's report (rank
// order): each part's model file, and its shards in the order of their
// ranges.
template <class ShardOf>
CheckpointParts parts_manifest(const std::vector<Report>& all, const ParamLayout& layout,
                               ShardOf&& shard_of) {
  CheckpointParts out;
  out.tensor_parallel = layout.split().size;
  out.pipeline_parallel = layout.stage().stages;
  out.world_size = static_cast<int>(all.size());
  out.parts.resize(static_cast<std::size_t>(out.tensor_parallel * out.pipeline_parallel));
  for (std::size_t r = 0; r < all.size(); ++r) {
    const Report& rep = all[r];
    CheckpointPart& part =
        out.parts.at(static_cast<std::size_t>(rep.stage * out.tensor_parallel + rep.tensor_rank));
    part.tensor_rank = rep.tensor_rank;
    part.stage = rep.stage;
    part.total = rep.part_total;
    if (rep.wrote_model != 0) {
      part.file =
          model_part_name(rep.tensor_rank, out.tensor_parallel, rep.stage, out.pipeline_parallel);
      part.bytes = rep.model_bytes;
      part.xxh3_128 = text_of(rep.model_xxh3_128, sizeof(rep.model_xxh3_128));
    }
    if (rep.wrote_moments != 0) part.shards.push_back(shard_of(static_cast<int>(r)));
  }
  for (CheckpointPart& part : out.parts) {
    if (part.file.empty()) {
      throw std::logic_error(
          fmt::format("no rank wrote tensor part {} of stage {}", part.tensor_rank, part.stage));
    }
    std::sort(part.shards.begin(), part.shards.end(),
              [](const OptimizerShard& a, const OptimizerShard& b) { return a.begin < b.begin; });
  }
  return out;
}

}  // namespace

// What this rank writes, and where it stands. The pointers are the live
// training state (synchronous saves) or the saver's copies (asynchronous).
struct CheckpointSaver::Job {
  TrainState state;
  const ParamLayout* layout = nullptr;
  const float* params = nullptr;  // rank 0 only
  const float* m = nullptr;
  const float* v = nullptr;
  FlatRange range;  // of m and v
  std::int64_t adamw_steps = 0;
  bool sharded = false;  // every rank takes part: zero = 1 on several ranks, or in parts
  bool parts = false;    // tensor or pipeline parallel: every part written where it is
  bool writes_model = false, writes_moments = false;
  bool fail_here = false;
  fs::path tmp;  // sharded: the directory every rank writes into
  std::chrono::steady_clock::time_point started;
  double stall_s = 0;  // the training time the save took before the write went on alone

  FileRecords replicated;  // sharded, rank 0
  Report outcome;
  std::thread thread;
  std::atomic<bool> done{false};
};

CheckpointSaver::CheckpointSaver(Communicator& comm, const CheckpointTarget& target, bool async)
    : comm_(comm), target_(target), async_(async) {}

CheckpointSaver::~CheckpointSaver() {
  if (job_ && job_->thread.joinable()) job_->thread.join();
}

CheckpointSaver::Roles CheckpointSaver::roles(const ParamLayout& layout,
                                              const DataParallel& dp) const {
  Roles r;
  r.parts = layout.split().size > 1 || layout.stage().stages > 1;
  r.sharded = comm_.size() > 1 && (dp.zero() == 1 || r.parts);
  const bool root = comm_.rank() == 0;
  // In parts, data rank 0 of each part writes its parameters; its moments
  // are written by every rank with ZeRO-1 (each its shard), else by data
  // rank 0 too. Otherwise rank 0 writes the model, and with ZeRO-1 every
  // rank its shard of the moments.
  r.writes_model = r.parts ? dp.data_rank() == 0 : root;
  r.writes_moments = r.sharded ? dp.zero() == 1 || dp.data_rank() == 0 : root;
  return r;
}

void CheckpointSaver::prepare(const ParamLayout& layout, const DataParallel& dp) {
  if (!async_) return;
  const Roles r = roles(layout, dp);
  // Allocated and touched now, so that the first save does not pay for it.
  if (r.writes_moments) {
    const auto n = static_cast<std::size_t>(dp.shard_end() - dp.shard_begin());
    m_copy_.assign(n, 0.0f);
    v_copy_.assign(n, 0.0f);
  }
  if (r.writes_model) params_copy_.assign(static_cast<std::size_t>(layout.total()), 0.0f);
}

std::size_t CheckpointSaver::copy_bytes() const {
  return (m_copy_.size() + v_copy_.size() + params_copy_.size()) * sizeof(float);
}

bool CheckpointSaver::local_done() const {
  return !job_ || job_->done;
}

std::int64_t CheckpointSaver::pending_step() const {
  return job_ ? job_->state.step : -1;
}

void CheckpointSaver::start(const TrainState& state, const ParamLayout& layout, const float* params,
                            DataParallel& dp, bool fail_here) {
  if (job_) throw std::logic_error("CheckpointSaver::start with a save in flight");
  const auto t0 = std::chrono::steady_clock::now();
  const int rank = comm_.rank();
  const bool root = rank == 0;
  auto job = std::make_unique<Job>();
  job->started = t0;
  job->state = state;
  job->layout = &layout;
  const Roles roles_here = roles(layout, dp);
  job->sharded = roles_here.sharded;
  job->parts = roles_here.parts;
  job->writes_model = roles_here.writes_model;
  job->writes_moments = roles_here.writes_moments;
  job->fail_here = fail_here;
  job->adamw_steps = dp.adamw_steps();
  job->range = {dp.shard_begin(), dp.shard_end()};
  if (!job->sharded && (job->range.begin != 0 || job->range.end != layout.total())) {
    throw std::logic_error("a replicated checkpoint needs the whole optimizer state");
  }

  if (job->sharded) {
    // Rank 0 makes the temporary directory; all ranks write into it.
    Report made;
    if (root) {
      made = attempt([&](Report& r) {
        set_text(r, checkpoint_temp_dir(target_.checkpoints, state.step).filename().string());
      });
    }
    made = from_root(comm_, made);
    if (made.ok == 0) fail(state.step, failure_text(0, comm_, made), target_.checkpoints);
    job->tmp = target_.checkpoints / text_of(made.text, sizeof(made.text));
  }

  const bool writes = job->writes_model || job->writes_moments;
  const AdamW& opt = dp.optimizer();
  Backend<float>& backend = dp.backend();
  // A GPU's memory reaches the files through a copy in host memory too.
  if (writes && (async_ || !backend.host_memory())) {
    // The copy in host memory the write reads while training goes on.
    const auto copy = [&](std::vector<float>& to, const float* from, std::size_t n) {
      to.resize(n);
      backend.download(to.data(), from, n * sizeof(float));
    };
    if (job->writes_moments) {
      const auto n = static_cast<std::size_t>(job->range.size());
      copy(m_copy_, opt.m().data(), n);
      copy(v_copy_, opt.v().data(), n);
      job->m = m_copy_.data();
      job->v = v_copy_.data();
    }
    if (job->writes_model) {
      copy(params_copy_, params, static_cast<std::size_t>(layout.total()));
      job->params = params_copy_.data();
    }
  } else {
    job->m = opt.m().data();
    job->v = opt.v().data();
    job->params = params;
  }
  launch(std::move(job), writes);
}

void CheckpointSaver::launch(std::unique_ptr<Job> job, bool writes) {
  job_ = std::move(job);
  if (!writes) {
    job_->done = true;
  } else if (async_) {
    job_->thread = std::thread([this, j = job_.get()] {
      // Below the training threads: on a node whose cores all train, the
      // write takes the idle moments rather than time from a step.
      setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 19);
      write_local(*j);
    });
  } else {
    write_local(*job_);
  }
  job_->stall_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - job_->started).count();
}

void CheckpointSaver::write_local(Job& j) {
  const int rank = comm_.rank();
  j.outcome = attempt([&](Report& r) {
    if (j.fail_here) {
      throw Error(fmt::format("injected failure at step {}", j.state.step), "BOREALIS_TEST_FAULT");
    }
    if (!j.sharded) {
      // The single-process format, published by rank 0 alone.
      save_checkpoint(target_.checkpoints, j.state, target_.model, *j.layout, j.params,
                      OptimizerState{j.m, j.v, j.adamw_steps}, target_.tokenizer,
                      target_.config_toml);
      return;
    }
    const ParamLayout& layout = *j.layout;
    r.tensor_rank = layout.split().rank;
    r.stage = layout.stage().stage;
    r.part_total = layout.total();
    if (j.writes_moments) {
      const std::map<std::string, std::string> extra =
          j.parts
              ? std::map<std::string, std::string>{{"tensor_rank", std::to_string(r.tensor_rank)},
                                                   {"stage", std::to_string(r.stage)}}
              : std::map<std::string, std::string>{};
      const OptimizerShard shard = write_optimizer_shard(j.tmp, rank, comm_.size(), layout.total(),
                                                         j.range, j.m, j.v, extra);
      r.wrote_moments = 1;
      r.begin = shard.begin;
      r.end = shard.end;
      r.bytes = shard.bytes;
      copy_hex(shard.xxh3_128, r.xxh3_128);
    }
    if (j.parts) {
      if (j.writes_model) {
        const FileDigest d = write_model_part(j.tmp, target_.model, layout, j.params);
        r.wrote_model = 1;
        r.model_bytes = d.bytes;
        copy_hex(d.xxh3_128.hex(), r.model_xxh3_128);
      }
      if (rank == 0) j.replicated = write_tokenizer_file(j.tmp, target_.tokenizer);
    } else if (rank == 0) {
      j.replicated =
          write_replicated_files(j.tmp, target_.model, layout, j.params, target_.tokenizer);
    }
  });
  j.done = true;
}

fs::path CheckpointSaver::finish() {
  if (!job_) throw std::logic_error("CheckpointSaver::finish with no save in flight");
  if (job_->thread.joinable()) job_->thread.join();
  const std::unique_ptr<Job> job = std::move(job_);
  const int rank = comm_.rank();
  const int ranks = comm_.size();
  const bool root = rank == 0;
  const std::int64_t step = job->state.step;
  const fs::path dir = target_.checkpoints / checkpoint_name(step);
  if (!job->sharded) {
    if (ranks == 1) {
      if (job->outcome.ok == 0) {
        fail(step, text_of(job->outcome.text, sizeof(job->outcome.text)), target_.checkpoints);
      }
    } else {
      const Report done = from_root(comm_, root ? job->outcome : Report{});
      if (done.ok == 0) fail(step, failure_text(0, comm_, done), target_.checkpoints);
    }
  } else {
    std::vector<Report> all(static_cast<std::size_t>(ranks));
    comm_.all_gather(std::span<const Report>(&job->outcome, 1), std::span<Report>(all));
    std::string failures;
    for (int r = 0; r < ranks; ++r) {
      const Report& rep = all[static_cast<std::size_t>(r)];
      if (rep.ok == 0) failures += (failures.empty() ? "" : "; ") + failure_text(r, comm_, rep);
    }
    if (!failures.empty()) {
      if (root) remove_quietly(job->tmp);
      fail(step, failures, job->tmp);
    }
    // Rank 0 writes state.json with the manifest, last, and renames.
    Report done;
    if (root) {
      done = attempt([&](Report&) {
        const auto shard_of = [&](int r) {
          const Report& rep = all[static_cast<std::size_t>(r)];
          return OptimizerShard{r,         optimizer_shard_name(r, ranks),
                                rep.begin, rep.end,
                                rep.bytes, text_of(rep.xxh3_128, sizeof(rep.xxh3_128))};
        };
        if (!job->parts) {
          std::vector<OptimizerShard> shards;
          for (int r = 0; r < ranks; ++r) shards.push_back(shard_of(r));
          publish_checkpoint(target_.checkpoints, job->tmp, job->state, target_.model,
                             job->adamw_steps, target_.config_toml, job->replicated, shards);
          return;
        }
        publish_checkpoint(target_.checkpoints, job->tmp, job->state, target_.model,
                           job->adamw_steps, target_.config_toml, job->replicated,
                           parts_manifest(all, *job->layout, shard_of));
      });
      if (done.ok == 0) remove_quietly(job->tmp);
    }
    done = from_root(comm_, done);
    if (done.ok == 0) fail(step, failure_text(0, comm_, done), job->tmp);
  }
  if (root) {
    prune_checkpoints(target_.checkpoints, target_.keep);
    const double total =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - job->started).count();
    if (async_) {
      spdlog::info(
          "checkpoint {} (written in the background in {:.2f} s; training paused {:.3f} s "
          "for the copy)",
          dir.string(), total, job->stall_s);
    } else {
      spdlog::info("checkpoint {} ({:.2f} s)", dir.string(), total);
    }
  }
  return dir;
}

void CheckpointSaver::abandon() {
  if (!job_) return;
  if (job_->thread.joinable()) job_->thread.join();
  if (job_->sharded) {
    spdlog::warn(
        "the checkpoint of step {}, written in the background, is dropped: its parts or shards "
        "cannot be agreed on after a time-out",
        job_->state.step);
    if (comm_.rank() == 0) remove_quietly(job_->tmp);
  }
  job_.reset();
}

void load_training_checkpoint(const CheckpointInfo& info, const ParamLayout& layout, float* params,
                              DataParallel& dp) {
  AdamW& opt = dp.optimizer();
  Backend<float>& backend = dp.backend();
  if (backend.host_memory()) {
    load_checkpoint(info, layout, params, {dp.shard_begin(), dp.shard_end()}, opt.m_data(),
                    opt.v_data());
  } else {
    // Read on the host, then copied to the device.
    const auto n = static_cast<std::size_t>(dp.shard_end() - dp.shard_begin());
    std::vector<float> p(static_cast<std::size_t>(layout.total())), m(n), v(n);
    load_checkpoint(info, layout, p.data(), {dp.shard_begin(), dp.shard_end()}, m.data(), v.data());
    backend.upload(params, p.data(), p.size() * sizeof(float));
    backend.upload(opt.m_data(), m.data(), n * sizeof(float));
    backend.upload(opt.v_data(), v.data(), n * sizeof(float));
  }
  opt.set_steps(info.adamw_steps);
}

}  // namespace borealis
