#include "train/dist_checkpoint.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <span>
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

fs::path save_sharded(Communicator& comm, const CheckpointTarget& target, const TrainState& state,
                      const ParamLayout& layout, const float* params, DataParallel& dp,
                      bool fail_here) {
  const int rank = comm.rank();
  const int ranks = comm.size();
  const bool root = rank == 0;
  // 1. Rank 0 makes the temporary directory; all ranks write into it.
  Report made;
  if (root) {
    made = attempt([&](Report& r) {
      set_text(r, checkpoint_temp_dir(target.checkpoints, state.step).filename().string());
    });
  }
  made = from_root(comm, made);
  if (made.ok == 0) fail(state.step, failure_text(0, comm, made), target.checkpoints);
  const fs::path tmp = target.checkpoints / text_of(made.text, sizeof(made.text));

  // 2. Every rank writes its shard, rank 0 also the replicated files.
  FileRecords replicated;
  const Report mine = attempt([&](Report& r) {
    if (fail_here) {
      throw Error(fmt::format("injected failure at step {}", state.step), "BOREALIS_TEST_FAULT");
    }
    const AdamW& opt = dp.optimizer();
    const OptimizerShard shard =
        write_optimizer_shard(tmp, rank, ranks, layout.total(), {dp.shard_begin(), dp.shard_end()},
                              opt.m().data(), opt.v().data());
    if (root) {
      replicated = write_replicated_files(tmp, target.model, layout, params, target.tokenizer);
    }
    r.begin = shard.begin;
    r.end = shard.end;
    r.bytes = shard.bytes;
    std::memcpy(r.xxh3_128, shard.xxh3_128.data(),
                std::min(shard.xxh3_128.size(), sizeof(r.xxh3_128) - 1));
  });
  std::vector<Report> all(static_cast<std::size_t>(ranks));
  comm.all_gather(std::span<const Report>(&mine, 1), std::span<Report>(all));
  std::string failures;
  for (int r = 0; r < ranks; ++r) {
    const Report& rep = all[static_cast<std::size_t>(r)];
    if (rep.ok == 0) failures += (failures.empty() ? "" : "; ") + failure_text(r, comm, rep);
  }
  if (!failures.empty()) {
    if (root) remove_quietly(tmp);
    fail(state.step, failures, tmp);
  }

  // 3. Rank 0 writes state.json with the manifest, last, and renames.
  Report done;
  if (root) {
    done = attempt([&](Report&) {
      std::vector<OptimizerShard> shards;
      for (int r = 0; r < ranks; ++r) {
        const Report& rep = all[static_cast<std::size_t>(r)];
        shards.push_back({r, optimizer_shard_name(r, ranks), rep.begin, rep.end, rep.bytes,
                          text_of(rep.xxh3_128, sizeof(rep.xxh3_128))});
      }
      publish_checkpoint(target.checkpoints, tmp, state, target.model, dp.adamw_steps(),
                         target.config_toml, replicated, shards);
    });
    if (done.ok == 0) remove_quietly(tmp);
  }
  done = from_root(comm, done);
  if (done.ok == 0) fail(state.step, failure_text(0, comm, done), tmp);
  return target.checkpoints / checkpoint_name(state.step);
}

}  // namespace

fs::path save_training_checkpoint(Communicator& comm, const CheckpointTarget& target,
                                  const TrainState& state, const ParamLayout& layout,
                                  const float* params, DataParallel& dp, bool fail_here) {
  const auto t0 = std::chrono::steady_clock::now();
  const bool root = comm.rank() == 0;
  fs::path dir;
  if (comm.size() > 1 && dp.zero() == 1) {
    dir = save_sharded(comm, target, state, layout, params, dp, fail_here);
  } else {
    // The single-process format, from rank 0's whole optimizer state.
    const auto save = [&] {
      if (fail_here) {
        throw Error(fmt::format("injected failure at step {}", state.step), "BOREALIS_TEST_FAULT");
      }
      return save_checkpoint(target.checkpoints, state, target.model, layout, params,
                             dp.optimizer(), target.tokenizer, target.config_toml);
    };
    if (comm.size() == 1) {
      try {
        dir = save();
      } catch (const Error& e) {
        fail(state.step, fmt::format("{} ({})", e.message(), e.where()), target.checkpoints);
      }
    } else {
      Report done;
      if (root) done = attempt([&](Report&) { save(); });
      done = from_root(comm, done);
      if (done.ok == 0) {
        fail(state.step, failure_text(0, comm, done), target.checkpoints);
      }
      dir = target.checkpoints / checkpoint_name(state.step);
    }
  }
  if (root) {
    prune_checkpoints(target.checkpoints, target.keep);
    spdlog::info("checkpoint {} ({:.2f} s)", dir.string(),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return dir;
}

void load_training_checkpoint(const CheckpointInfo& info, const ParamLayout& layout, float* params,
                              DataParallel& dp) {
  AdamW& opt = dp.optimizer();
  load_checkpoint(info, layout, params, {dp.shard_begin(), dp.shard_end()}, opt.m_data(),
                  opt.v_data());
  opt.set_steps(info.adamw_steps);
}

}  // namespace borealis
