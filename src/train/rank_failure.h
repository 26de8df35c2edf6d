// What a data-parallel training run does when a rank stops answering, and
// the faults the tests inject (BOREALIS_TEST_FAULT).
//
// A CommTimeout that ends the training loop (a gradient reduction, the loss,
// norm or stop-flag gathers, validation, a checkpoint agreement) reaches
// save_after_timeout() on every rank that threw it, before the error goes on:
//   - the lowest-numbered rank that answered the time-out's probe
//     (CommTimeout::first_answering) is the writer. With plain data
//     parallelism (dist.zero = 0) it holds the whole parameters and moments,
//     so it writes the checkpoint of the last completed step alone, in the
//     single-process format, with no collective; unless that step is
//     checkpointed already, or no step was completed, or the time-out came in
//     the middle of an update or of a checkpoint save (a state that must not
//     be written, or a save that must not start over). With ZeRO-1 the
//     silent ranks hold shards of the moments, so no complete checkpoint can
//     be written. In every case it logs which checkpoint the run resumes
//     from. While it writes (on a thread of its own) it keeps answering
//     probes, so that ranks that time out later see it alive and leave the
//     writing to it.
//   - every other rank waits up to `writer_wait`, answering probes, for the
//     writer, whose communicator then ends the whole job (MPI_Abort); a
//     writer that does not finish in time is ended with the job when the
//     waiting ranks give up.
// The caller rethrows the CommTimeout, so the job still exits with the
// time-out message.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>

#include "dist/communicator.h"
#include "model/params.h"
#include "optim/adamw.h"
#include "train/checkpoint.h"
#include "train/dist_checkpoint.h"

namespace borealis {

// Where the training loop stands.
enum class TrainPhase {
  Consistent,  // parameters, moments and TrainState all belong to state.step
  Updating,    // between the start of an update and the end of its bookkeeping
  Saving,      // inside a checkpoint save
};

struct TimeoutRescue {
  TrainPhase phase = TrainPhase::Consistent;
  const TrainState* state = nullptr;         // recent_losses and elapsed_s up to date
  std::int64_t checkpointed_step = -1;       // the step of last_checkpoint; -1: none
  std::filesystem::path last_checkpoint;     // empty: none
  int zero = 0;                              // dist.zero
  const CheckpointTarget* target = nullptr;  // where and what to write
  const ParamLayout* layout = nullptr;
  const float* params = nullptr;
  const AdamW* optimizer = nullptr;  // whole moments when zero = 0
};

// Runs the writer's or a waiting rank's part (see above). Returns the
// checkpoint written, or an empty path. Never throws.
std::filesystem::path save_after_timeout(const CommTimeout& timeout, Communicator& comm,
                                         const TimeoutRescue& rescue,
                                         std::chrono::milliseconds writer_wait);

// BOREALIS_TEST_FAULT=RANK:STEP:hang|exit makes that rank hang (sleep until
// killed) or exit at once with status 3 when it starts step STEP: how the
// tests check that the other ranks then fail within the time-out.
// RANK:STEP:save makes that rank fail to write its part of the checkpoint of
// step STEP: every rank must then fail and no checkpoint may appear.
// RANK:STEP:killsave makes that rank kill itself (SIGKILL) in the middle of
// writing the checkpoint of step STEP (after model.safetensors, before the
// rest). With BOREALIS_TEST_FAULT_ONCE=PATH the fault fires only while PATH
// does not exist, and creates it as it fires: so that a restarted job runs
// past the step (the soak test, tests/dist/soak_test.py).
struct InjectedFault {
  int rank = -1;
  std::int64_t step = 0;
  bool hang = false;
  bool save = false;
  bool kill_in_save = false;
  std::string once;  // BOREALIS_TEST_FAULT_ONCE: the marker file; empty: every job

  // Throws Error for a malformed value.
  static InjectedFault from_env();
  bool fails_save(int rank_now, std::int64_t step_now) const {
    return save && rank_now == rank && step_now == step;
  }
  // Hangs or exits when this is the rank and step.
  void at_step(int rank_now, std::int64_t step_now) const;
  // Before a checkpoint save: arms the killsave fault for this rank and step.
  void before_save(int rank_now, std::int64_t step_now) const;

 private:
  // Creates the BOREALIS_TEST_FAULT_ONCE marker.
  void fired() const;
};

}  // namespace borealis
