// Learning-rate schedules, as a pure function of the step (so resume is exact).
//
//   cosine:   linear warm-up to lr_max, then cosine decay to lr_min at total_steps
//   linear:   linear warm-up, then linear decay to lr_min at total_steps
//   constant: linear warm-up, then lr_max
//   wsd:      warmup-stable-decay: warm-up, lr_max until the last decay_steps,
//             then linear decay to lr_min at total_steps
// Steps count from 0; during warm-up lr = lr_max * (step + 1) / warmup_steps.
// After total_steps the schedule stays at its final value.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace borealis {

enum class LrDecay { kCosine, kLinear, kConstant, kWsd };

// Parses "cosine", "linear", "constant" or "wsd"; throws borealis::Error otherwise.
LrDecay parse_lr_decay(std::string_view name);

struct LrSchedule {
  LrDecay decay = LrDecay::kCosine;
  double lr_max = 6e-4;
  double lr_min = 0.0;
  std::int64_t warmup_steps = 0;
  std::int64_t total_steps = 1;
  std::int64_t decay_steps = 0;  // wsd only

  // Throws borealis::Error for inconsistent settings.
  void validate() const;
  double lr(std::int64_t step) const;
};

}  // namespace borealis
