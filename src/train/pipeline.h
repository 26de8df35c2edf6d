// Pipeline parallelism (Megatron-LM, arXiv 2104.04473): the model's layers
// in P stages on P ranks, each step's m micro-batches going through them
// in the 1F1B schedule, activations and their gradients sent point to point
// between neighbouring stages.
//
// The schedule of stage s (PipeDream-Flush, as Megatron-LM runs it without
// interleaving): w = min(P - s - 1, m) warm-up forwards, then m - w rounds
// of one forward and one backward, then w backwards. A stage holds at most
// P - s micro-batches' activations at once (Model slots), not m.
//
// The messages are in a fixed order that the schedule itself fixes, the
// same on every run: between stages s and s + 1 they go strictly in the
// order of the actions below, and where both would send at once (a forward
// output going up while a gradient comes down) the two are one sendrecv, so
// that no pair of stages ever waits on each other's send. Every action list
// is checked for this by a simulation of blocking (rendezvous) sends in the
// tests, for P up to 8 and m up to 16.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "model/model.h"

namespace borealis {

struct PipeAction {
  enum Kind {
    kForward,                  // forward of micro-batch `micro`
    kBackward,                 // backward of `micro`
    kRecvForward,              // its input from the previous stage
    kSendForward,              // its output to the next stage
    kRecvBackward,             // its output's gradient from the next stage
    kSendBackward,             // its input's gradient to the previous stage
    kSendForwardRecvBackward,  // output of `micro` up, gradient of `other` down
    kSendBackwardRecvForward,  // gradient of `micro` down, input of `other` up
  };
  Kind kind;
  int micro;
  int other = -1;
};

const char* pipe_action_name(PipeAction::Kind kind);

// The 1F1B actions of `stage` of `stages` for `micro_batches` micro-batches.
std::vector<PipeAction> one_f_one_b(int stage, int stages, int micro_batches);

// Checks that the stages' action lists (one per stage) run to the end with
// blocking sends, each message received as the micro-batch it was sent as.
// Returns "" or what goes wrong.
std::string check_schedule(const std::vector<std::vector<PipeAction>>& stages);

// The fraction of a step a stage is idle, ideally: (P - 1) / m of the time
// the micro-batches' work takes (forward and backward taking the same time
// on every stage, communication free).
double ideal_bubble(int stages, int micro_batches);

// Time one step of a stage took, for the bubble measured against the ideal.
struct PipelineTimes {
  double compute_s = 0;   // in forward and backward
  double total_s = 0;     // the whole schedule
  double sent_bytes = 0;  // activations and gradients this stage sent
  int messages = 0;       // and in how many messages
  // Idle time against compute time: (total - compute) / compute.
  double bubble() const { return compute_s > 0 ? (total_s - compute_s) / compute_s : 0; }
};

// One pipeline: this rank's stage of the model and the communicator of the
// pipeline's ranks (rank s holds stage s). Every rank of the pipeline makes
// it at the same point (it splits off the group of the first and last
// stage, which keep tied embeddings equal).
template <typename T>
class Pipeline {
 public:
  Pipeline(Communicator& pipe, Model<T>& model, int micro_batches);

  int micro_batches() const { return micro_; }
  // Activation sets this stage keeps: min(P - stage, micro-batches), the
  // most micro-batches in flight at once (Model::reserve's slots).
  int slots() const { return slots_; }
  // Forward and backward of micro_batches() micro-batches of B sequences of
  // seq tokens: micro-batch i at tokens + i * B * seq (first stage) and
  // targets + i * B * seq (last stage); the others may pass null. Gradients
  // accumulate into the model's with grad_scale on each micro-batch's mean
  // loss. Returns every micro-batch's mean loss, on every stage.
  std::vector<double> train(const std::int32_t* tokens, const std::int32_t* targets, int B, int seq,
                            T grad_scale);
  // Forward only, for validation: `count` micro-batches laid out as for
  // train(), their mean losses on every stage. Stage s works on micro-batch
  // i while stage s + 1 works on i - 1.
  std::vector<double> evaluate(const std::int32_t* tokens, const std::int32_t* targets, int B,
                               int seq, int count);
  // Tied embeddings: adds the first stage's and the last stage's gradients
  // of wte, so that both copies take the same update. Call once per step,
  // after train() and before the gradients are read. Nothing to do for
  // untied embeddings or one stage.
  void sync_tied_grads();
  // The last train()'s times.
  const PipelineTimes& times() const { return times_; }

 private:
  // The stage buffers of micro-batch `micro` (its slot selected).
  std::span<T> input(int micro, std::int64_t elems);
  std::span<const T> output(int micro, std::int64_t elems);
  // The last stage's losses, sent to every stage.
  std::vector<double> share_losses();

  Communicator& pipe_;
  Model<T>& model_;
  const int micro_;
  const int stage_, stages_;
  const int slots_;
  std::unique_ptr<Communicator> ends_;  // the first and last stage (tied embeddings)
  std::vector<double> losses_;
  PipelineTimes times_;
};

extern template class Pipeline<float>;
extern template class Pipeline<double>;

}  // namespace borealis
