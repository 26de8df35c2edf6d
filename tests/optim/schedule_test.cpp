// Learning-rate schedules at hand-computed points.
#include "optim/schedule.h"

#include <gtest/gtest.h>

#include "core/error.h"

namespace borealis {
namespace {

LrSchedule make(LrDecay decay) {
  LrSchedule s;
  s.decay = decay;
  s.lr_max = 1.0;
  s.lr_min = 0.1;
  s.warmup_steps = 10;
  s.total_steps = 110;
  s.decay_steps = 20;
  s.validate();
  return s;
}

TEST(LrSchedule, WarmupIsLinear) {
  for (auto d : {LrDecay::kCosine, LrDecay::kLinear, LrDecay::kConstant, LrDecay::kWsd}) {
    const LrSchedule s = make(d);
    EXPECT_DOUBLE_EQ(s.lr(0), 0.1);
    EXPECT_DOUBLE_EQ(s.lr(4), 0.5);
    EXPECT_DOUBLE_EQ(s.lr(9), 1.0);
    EXPECT_DOUBLE_EQ(s.lr(10), 1.0);
  }
}

TEST(LrSchedule, Cosine) {
  const LrSchedule s = make(LrDecay::kCosine);
  // A quarter of the way: 0.1 + 0.9 * (1 + cos(pi/4)) / 2.
  EXPECT_NEAR(s.lr(35), 0.8681980515, 1e-9);
  EXPECT_NEAR(s.lr(60), 0.55, 1e-12);
  EXPECT_NEAR(s.lr(110), 0.1, 1e-12);
  EXPECT_NEAR(s.lr(500), 0.1, 1e-12);
}

TEST(LrSchedule, LinearConstantWsd) {
  const LrSchedule lin = make(LrDecay::kLinear);
  EXPECT_NEAR(lin.lr(35), 0.775, 1e-12);
  EXPECT_NEAR(lin.lr(110), 0.1, 1e-12);
  const LrSchedule cst = make(LrDecay::kConstant);
  EXPECT_DOUBLE_EQ(cst.lr(35), 1.0);
  EXPECT_DOUBLE_EQ(cst.lr(1000), 1.0);
  const LrSchedule wsd = make(LrDecay::kWsd);  // stable until step 90, then 20 decay steps
  EXPECT_DOUBLE_EQ(wsd.lr(60), 1.0);
  EXPECT_DOUBLE_EQ(wsd.lr(90), 1.0);
  EXPECT_NEAR(wsd.lr(100), 0.55, 1e-12);
  EXPECT_NEAR(wsd.lr(110), 0.1, 1e-12);
}

TEST(LrSchedule, RejectsBadSettings) {
  EXPECT_EQ(parse_lr_decay("wsd"), LrDecay::kWsd);
  EXPECT_THROW(parse_lr_decay("exponential"), Error);
  LrSchedule s = make(LrDecay::kCosine);
  s.lr_min = 2.0;
  EXPECT_THROW(s.validate(), Error);
  s = make(LrDecay::kCosine);
  s.warmup_steps = 200;
  EXPECT_THROW(s.validate(), Error);
  s = make(LrDecay::kWsd);
  s.decay_steps = 0;
  EXPECT_THROW(s.validate(), Error);
}

}  // namespace
}  // namespace borealis
