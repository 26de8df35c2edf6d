#include "train/rank_failure.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <thread>

#include "core/error.h"
#include "core/stopwatch.h"

namespace borealis {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

// "the last checkpoint is step 4 (DIR)"
std::string last_checkpoint_text(const TimeoutRescue& r) {
  if (r.last_checkpoint.empty()) return "this run has no checkpoint";
  return fmt::format("the last checkpoint is step {} ({})", r.checkpointed_step,
                     r.last_checkpoint.string());
}

std::string ranks_text(const CommTimeout& e, const Communicator& comm) {
  std::string out;
  for (const int r : e.silent()) {
    out += fmt::format("{}rank {} ({})", out.empty() ? "" : ", ", r, comm.host(r));
  }
  return out;
}

// Why the writer writes nothing, or "" when it writes.
std::string reason_not_to_write(const CommTimeout& e, const Communicator& comm,
                                const TimeoutRescue& r) {
  const std::int64_t step = r.state->step;
  switch (r.phase) {
    case TrainPhase::Updating:
      return fmt::format("the time-out came during the update of step {}, which is incomplete",
                         step + 1);
    case TrainPhase::Saving:
      return fmt::format(
          "the time-out came while the checkpoint of step {} was being saved; it exists only if "
          "its directory is complete (--resume auto checks)",
          step);
    case TrainPhase::Consistent:
      break;
  }
  if (step == r.checkpointed_step) return fmt::format("step {} is checkpointed already", step);
  if (step == 0) return "no step was completed";
  if (r.zero == 1 && comm.size() > 1) {
    const std::size_t n = e.silent().size();
    return fmt::format(
        "with dist.zero = 1 the optimizer moments are sharded over the ranks{}, so no complete "
        "checkpoint of step {} can be written",
        n == 0   ? " and cannot be gathered after a time-out"
        : n == 1 ? " and " + ranks_text(e, comm) + " holds a shard but does not answer"
                 : " and " + ranks_text(e, comm) + " hold shards but do not answer",
        step);
  }
  return "";
}

// Writes the checkpoint on a thread while this one answers probes.
fs::path write_alone(Communicator& comm, const TimeoutRescue& r) {
  fs::path dir;
  std::exception_ptr error;
  std::atomic<bool> done{false};
  std::thread writer([&] {
    try {
      dir = save_checkpoint(r.target->checkpoints, *r.state, r.target->model, *r.layout, r.params,
                            *r.optimizer, r.target->tokenizer, r.target->config_toml);
      prune_checkpoints(r.target->checkpoints, r.target->keep);
    } catch (...) {
      error = std::current_exception();
    }
    done = true;
  });
  while (!done) {
    comm.answer_probes();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  writer.join();
  if (error) std::rethrow_exception(error);
  return dir;
}

}  // namespace

fs::path save_after_timeout(const CommTimeout& timeout, Communicator& comm,
                            const TimeoutRescue& rescue, std::chrono::milliseconds writer_wait) {
  const int writer = timeout.first_answering();
  if (writer != comm.rank()) {
    // The writer ends the job when it is done; until then this rank stays,
    // so that its exit does not end the job under the writer.
    spdlog::info("waiting up to {:.1f} s for rank {} ({}) to save the run after the time-out",
                 std::chrono::duration<double>(writer_wait).count(), writer, comm.host(writer));
    const auto until = Clock::now() + writer_wait;
    while (Clock::now() < until) {
      comm.answer_probes();
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    spdlog::error("rank {} ({}) did not end the job within {:.1f} s of this rank's time-out",
                  writer, comm.host(writer), std::chrono::duration<double>(writer_wait).count());
    return {};
  }
  try {
    const std::string why = reason_not_to_write(timeout, comm, rescue);
    if (!why.empty()) {
      spdlog::error("no checkpoint after the time-out: {}; {}", why, last_checkpoint_text(rescue));
      return {};
    }
    const auto t0 = Clock::now();
    const fs::path dir = write_alone(comm, rescue);
    spdlog::warn(
        "after the time-out, rank {} wrote the checkpoint of step {} alone: {} ({:.2f} s); "
        "`borealis train` with the same config resumes from it on any number of ranks",
        comm.rank(), rescue.state->step, dir.string(), seconds_since(t0));
    return dir;
  } catch (const std::exception& e) {
    spdlog::error("the checkpoint of step {} could not be written after the time-out: {}; {}",
                  rescue.state->step, e.what(), last_checkpoint_text(rescue));
  }
  return {};
}

InjectedFault InjectedFault::from_env() {
  InjectedFault f;
  const char* env = std::getenv("BOREALIS_TEST_FAULT");
  if (env == nullptr || *env == '\0') return f;
  char what[9] = {};
  long long step = 0;
  const std::string kinds = " hang exit save killsave ";
  if (std::sscanf(env, "%d:%lld:%8s", &f.rank, &step, what) != 3 ||
      kinds.find(" " + std::string(what) + " ") == std::string::npos) {
    throw Error(fmt::format("expected RANK:STEP:hang, exit, save or killsave, got '{}'", env),
                "BOREALIS_TEST_FAULT");
  }
  const char* once = std::getenv("BOREALIS_TEST_FAULT_ONCE");
  if (once != nullptr && *once != '\0') {
    if (fs::exists(once)) return InjectedFault{};  // fired in an earlier job
    f.once = once;
  }
  f.step = step;
  f.hang = std::string(what) == "hang";
  f.save = std::string(what) == "save";
  f.kill_in_save = std::string(what) == "killsave";
  return f;
}

void InjectedFault::fired() const {
  if (once.empty()) return;
  std::FILE* marker = std::fopen(once.c_str(), "w");
  if (marker != nullptr) std::fclose(marker);
}

void InjectedFault::before_save(int rank_now, std::int64_t step_now) const {
  if (!kill_in_save || rank_now != rank || step_now != step) return;
  set_checkpoint_file_hook([this](const fs::path& written) {
    spdlog::error("BOREALIS_TEST_FAULT: rank {} killsave: killed after writing {}", rank,
                  written.string());
    fired();
    std::raise(SIGKILL);
  });
}

void InjectedFault::at_step(int rank_now, std::int64_t step_now) const {
  if (save || kill_in_save || rank_now != rank || step_now != step) return;
  fired();
  spdlog::error("BOREALIS_TEST_FAULT: rank {} {} at step {}", rank, hang ? "hangs" : "exits", step);
  if (!hang) _exit(3);
  for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

}  // namespace borealis
