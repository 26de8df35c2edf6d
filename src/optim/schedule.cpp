#include "optim/schedule.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"

namespace borealis {

LrDecay parse_lr_decay(std::string_view name) {
  if (name == "cosine") return LrDecay::kCosine;
  if (name == "linear") return LrDecay::kLinear;
  if (name == "constant") return LrDecay::kConstant;
  if (name == "wsd") return LrDecay::kWsd;
  throw Error(fmt::format("unknown learning-rate schedule '{}' (known: cosine, linear, "
                          "constant, wsd)",
                          name),
              "lr schedule");
}

void LrSchedule::validate() const {
  const char* where = "lr schedule";
  if (!(lr_max > 0.0) || lr_min < 0.0 || lr_min > lr_max) {
    throw Error(fmt::format("need 0 <= lr_min <= lr_max and lr_max > 0, got lr_min {} lr_max {}",
                            lr_min, lr_max),
                where);
  }
  if (warmup_steps < 0 || total_steps <= 0 || warmup_steps > total_steps) {
    throw Error(fmt::format("need 0 <= warmup_steps <= total_steps and total_steps > 0, got {} "
                            "and {}",
                            warmup_steps, total_steps),
                where);
  }
  if (decay == LrDecay::kWsd && (decay_steps <= 0 || decay_steps > total_steps - warmup_steps)) {
    throw Error(
        fmt::format("wsd needs 0 < decay_steps <= total_steps - warmup_steps, got {}", decay_steps),
        where);
  }
}

double LrSchedule::lr(std::int64_t step) const {
  if (step < warmup_steps) {
    return lr_max * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  }
  step = std::min(step, total_steps);
  switch (decay) {
    case LrDecay::kConstant:
      return lr_max;
    case LrDecay::kCosine:
    case LrDecay::kLinear: {
      const std::int64_t span = total_steps - warmup_steps;
      const double frac =
          span == 0 ? 1.0 : static_cast<double>(step - warmup_steps) / static_cast<double>(span);
      const double k =
          decay == LrDecay::kCosine ? 0.5 * (1.0 + std::cos(std::numbers::pi * frac)) : 1.0 - frac;
      return lr_min + (lr_max - lr_min) * k;
    }
    case LrDecay::kWsd: {
      const std::int64_t decay_start = total_steps - decay_steps;
      if (step < decay_start) return lr_max;
      const double frac =
          static_cast<double>(step - decay_start) / static_cast<double>(decay_steps);
      return lr_min + (lr_max - lr_min) * (1.0 - frac);
    }
  }
  return lr_max;
}

}  // namespace borealis
