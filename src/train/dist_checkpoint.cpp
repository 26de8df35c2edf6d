#include "train/dist_checkpoint.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <span>
#include <thread>
#include <type_traits>
#include <vector>

#include "core/error.h"

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

void remove_quietly(const fs::path& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (ec) spdlog::warn("could not remove {}: {}", dir.string(), ec.message());
}

[[noreturn]] void fail(std::int64_t step, const std::string& why, const fs::path& where) {
  throw Error(fmt::format("the checkpoint of step {} was not written: {}", step, why),
              where.string());
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
  bool sharded = false;  // zero = 1 on several ranks
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

void CheckpointSaver::prepare(const ParamLayout& layout, const DataParallel& dp) {
  if (!async_) return;
  const bool sharded = comm_.size() > 1 && dp.zero() == 1;
  if (!sharded && comm_.rank() != 0) return;  // rank 0 writes alone
  // Allocated and touched now, so that the first save does not pay for it.
  const auto n = static_cast<std::size_t>(dp.shard_end() - dp.shard_begin());
  m_copy_.assign(n, 0.0f);
  v_copy_.assign(n, 0.0f);
  if (comm_.rank() == 0) params_copy_.assign(static_cast<std::size_t>(layout.total()), 0.0f);
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
  job->sharded = comm_.size() > 1 && dp.zero() == 1;
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

  const bool writes = job->sharded || root;  // replicated: rank 0 writes alone
  const AdamW& opt = dp.optimizer();
  if (writes && async_) {
    // The copy in host memory the write reads while training goes on.
    const auto n = static_cast<std::size_t>(job->range.size());
    m_copy_.assign(opt.m().data(), opt.m().data() + n);
    v_copy_.assign(opt.v().data(), opt.v().data() + n);
    job->m = m_copy_.data();
    job->v = v_copy_.data();
    if (root) {
      params_copy_.assign(params, params + layout.total());
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

void CheckpointSaver::start(const TrainState& state, const WholeState& whole, bool fail_here) {
  if (job_) throw std::logic_error("CheckpointSaver::start with a save in flight");
  auto job = std::make_unique<Job>();
  job->started = std::chrono::steady_clock::now();
  job->state = state;
  job->layout = whole.layout;
  job->fail_here = fail_here;
  job->adamw_steps = whole.adamw_steps;
  job->range = {0, whole.layout->total()};
  job->params = whole.params;
  job->m = whole.m;
  job->v = whole.v;
  launch(std::move(job), comm_.rank() == 0);
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
    const OptimizerShard shard =
        write_optimizer_shard(j.tmp, rank, comm_.size(), j.layout->total(), j.range, j.m, j.v);
    if (rank == 0) {
      j.replicated =
          write_replicated_files(j.tmp, target_.model, *j.layout, j.params, target_.tokenizer);
    }
    r.begin = shard.begin;
    r.end = shard.end;
    r.bytes = shard.bytes;
    std::memcpy(r.xxh3_128, shard.xxh3_128.data(),
                std::min(shard.xxh3_128.size(), sizeof(r.xxh3_128) - 1));
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
        std::vector<OptimizerShard> shards;
        for (int r = 0; r < ranks; ++r) {
          const Report& rep = all[static_cast<std::size_t>(r)];
          shards.push_back({r, optimizer_shard_name(r, ranks), rep.begin, rep.end, rep.bytes,
                            text_of(rep.xxh3_128, sizeof(rep.xxh3_128))});
        }
        publish_checkpoint(target_.checkpoints, job->tmp, job->state, target_.model,
                           job->adamw_steps, target_.config_toml, job->replicated, shards);
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
        "the checkpoint of step {}, written in the background, is dropped: with dist.zero = 1 "
        "its shards cannot be agreed on after a time-out",
        job_->state.step);
    if (comm_.rank() == 0) remove_quietly(job_->tmp);
  }
  job_.reset();
}

void load_training_checkpoint(const CheckpointInfo& info, const ParamLayout& layout, float* params,
                              DataParallel& dp) {
  AdamW& opt = dp.optimizer();
  load_checkpoint(info, layout, params, {dp.shard_begin(), dp.shard_end()}, opt.m_data(),
                  opt.v_data());
  opt.set_steps(info.adamw_steps);
}

}  // namespace borealis
