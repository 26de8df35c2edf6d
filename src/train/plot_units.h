// Small helpers shared by the charts and the summary of `borealis plot`.
#pragma once

#include <cmath>
#include <optional>
#include <string>

namespace borealis::plot_detail {

// Large counts are shown in thousands, millions... so that tick labels stay short.
struct Unit {
  double divisor = 1;
  std::string name;    // "", "thousands", "millions", ...
  std::string prefix;  // "", "k", "M", ...
};

// The unit for values up to `max`; `headroom` is how many units the largest
// value needs before the next unit is used (10: "9500 thousands", 1: "9.5 millions").
inline Unit unit_for(double max, double headroom = 10) {
  if (max >= 1e12 * headroom) return {1e12, "trillions", "T"};
  if (max >= 1e9 * headroom) return {1e9, "billions", "B"};
  if (max >= 1e6 * headroom) return {1e6, "millions", "M"};
  if (max >= 1e3 * headroom) return {1e3, "thousands", "k"};
  return {};
}

// A value that can be drawn or summed: present and finite.
inline bool usable(const std::optional<double>& v) {
  return v.has_value() && std::isfinite(*v);
}

}  // namespace borealis::plot_detail
