// The 1F1B schedule: its shape (warm-up, steady 1F1B, cool-down), and that
// every pipeline of up to 8 stages and 16 micro-batches runs to the end
// with blocking sends, each message arriving as the micro-batch it was
// sent as. And that the checker itself catches a deadlock and a mismatch.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "model/config.h"
#include "model/params.h"
#include "train/pipeline.h"

namespace borealis {
namespace {

std::string kinds(const std::vector<PipeAction>& actions) {
  std::string out;
  for (const PipeAction& a : actions) {
    switch (a.kind) {
      case PipeAction::kForward:
        out += "F" + std::to_string(a.micro);
        break;
      case PipeAction::kBackward:
        out += "B" + std::to_string(a.micro);
        break;
      default:
        break;
    }
  }
  return out;
}

TEST(PipelineSchedule, OneForwardOneBackward) {
  // 4 stages, 6 micro-batches: stage s warms up with 3 - s forwards.
  EXPECT_EQ(kinds(one_f_one_b(0, 4, 6)), "F0F1F2F3B0F4B1F5B2B3B4B5");
  EXPECT_EQ(kinds(one_f_one_b(2, 4, 6)), "F0F1B0F2B1F3B2F4B3F5B4B5");
  EXPECT_EQ(kinds(one_f_one_b(3, 4, 6)), "F0B0F1B1F2B2F3B3F4B4F5B5");
  // Fewer micro-batches than stages: all forwards, then all backwards.
  EXPECT_EQ(kinds(one_f_one_b(0, 4, 2)), "F0F1B0B1");
  // One stage: no messages at all.
  for (const PipeAction& a : one_f_one_b(0, 1, 3)) {
    EXPECT_TRUE(a.kind == PipeAction::kForward || a.kind == PipeAction::kBackward);
  }
  // The middle stage's steady state pairs its messages.
  const auto mid = one_f_one_b(1, 3, 4);
  int pairs = 0;
  for (const PipeAction& a : mid) {
    pairs += a.kind == PipeAction::kSendForwardRecvBackward ||
             a.kind == PipeAction::kSendBackwardRecvForward;
  }
  EXPECT_EQ(pairs, 3 + 2);
}

TEST(PipelineSchedule, NoDeadlockAndMessagesMatch) {
  for (int P = 1; P <= 8; ++P) {
    for (int m = 1; m <= 16; ++m) {
      std::vector<std::vector<PipeAction>> stages;
      for (int s = 0; s < P; ++s) {
        stages.push_back(one_f_one_b(s, P, m));
        // Every micro-batch goes forward and backward once on every stage,
        // and at most P - s are in flight.
        int in_flight = 0, most = 0, forwards = 0, backwards = 0;
        for (const PipeAction& a : stages.back()) {
          if (a.kind == PipeAction::kForward) most = std::max(most, ++in_flight), ++forwards;
          if (a.kind == PipeAction::kBackward) --in_flight, ++backwards;
        }
        EXPECT_EQ(forwards, m);
        EXPECT_EQ(backwards, m);
        EXPECT_LE(most, std::min(P - s, m)) << "stage " << s << " of " << P << ", m " << m;
      }
      EXPECT_EQ(check_schedule(stages), "") << P << " stages, " << m << " micro-batches";
    }
  }
}

TEST(PipelineSchedule, CheckerFindsDeadlocksAndMismatches) {
  using A = PipeAction;
  // Both stages send first: with blocking sends neither reaches its receive.
  std::vector<std::vector<A>> both_send = {
      {{A::kForward, 0}, {A::kSendForward, 0}, {A::kRecvBackward, 0}, {A::kBackward, 0}},
      {{A::kSendBackward, 0}, {A::kRecvForward, 0}}};
  EXPECT_NE(check_schedule(both_send).find("deadlock"), std::string::npos);
  // The receiver expects another micro-batch than the one sent.
  std::vector<std::vector<A>> mismatch = {{{A::kSendForward, 0}, {A::kSendForward, 1}},
                                          {{A::kRecvForward, 1}, {A::kRecvForward, 0}}};
  EXPECT_NE(check_schedule(mismatch).find("meets"), std::string::npos);
}

TEST(PipelineSchedule, IdealBubble) {
  EXPECT_DOUBLE_EQ(ideal_bubble(1, 4), 0.0);
  EXPECT_DOUBLE_EQ(ideal_bubble(4, 8), 3.0 / 8);
}

TEST(PipelineLayout, StagesHoldTheirLayers) {
  ModelConfig c = model_preset("gpt2-tiny");
  c.n_layer = 4;
  const ParamLayout whole(c);
  const ParamLayout first(c, {}, {0, 2});
  const ParamLayout last(c, {}, {1, 2});
  EXPECT_EQ(first.first_layer(), 0);
  EXPECT_EQ(first.end_layer(), 2);
  EXPECT_EQ(last.first_layer(), 2);
  EXPECT_GE(first.wte(), 0);
  EXPECT_GE(first.wpe(), 0);
  EXPECT_EQ(first.lnf_w(), -1);
  EXPECT_EQ(first.lm_head(), -1);
  EXPECT_EQ(last.wpe(), -1);
  EXPECT_GE(last.lnf_w(), 0);
  // Tied embeddings: the last stage's output layer is a copy of wte.
  const ParamView& copy = last.find("wte");
  EXPECT_TRUE(copy.pipeline_copy);
  EXPECT_EQ(last.lm_head(), copy.offset);
  EXPECT_FALSE(first.find("wte").pipeline_copy);
  EXPECT_THROW(last.find("h.0.ln1.w"), std::out_of_range);
  EXPECT_EQ(first.find("h.1.mlp.proj.w").shape, whole.find("h.1.mlp.proj.w").shape);
  // The stages hold every tensor once, and the copy.
  EXPECT_EQ(first.total() + last.total(), whole.total() + copy.size);
  // Untied: the last stage has lm_head.w and no wte.
  ModelConfig u = model_preset("llama-tiny");
  u.n_layer = 4;
  const ParamLayout ulast(u, {}, {1, 2});
  EXPECT_THROW(ulast.find("wte"), std::out_of_range);
  EXPECT_GE(ulast.lm_head(), 0);
  EXPECT_EQ(ParamLayout(u, {}, {0, 2}).total() + ulast.total(), ParamLayout(u).total());
  // Layers must divide into the stages.
  EXPECT_THROW(ParamLayout(c, {}, {0, 3}), Error);
  EXPECT_THROW(ParamLayout(c, {}, {2, 2}), std::invalid_argument);
}

}  // namespace
}  // namespace borealis
