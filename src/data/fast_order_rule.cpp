#include "data/fast_order_rule.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

namespace borealis {

Blender::Blender(std::vector<double> weights)
    : weights_(std::move(weights)), counts_(weights_.size(), 0) {
  double total = 0;
  for (const double w : weights_) {
    if (!(w >= 0)) throw std::invalid_argument("Blender: negative weight");
    total += w;
  }
  if (!(total > 0)) throw std::invalid_argument("Blender: the weights add up to zero");
  if (weights_.size() >= kNone) throw std::invalid_argument("Blender: too many sources");
  double smallest = 1;
  for (double& w : weights_) {
    w /= total;
    if (w > 0) smallest = std::min(smallest, w);
  }
  for (std::size_t k = 0; k < weights_.size(); ++k) {
    due_.push_back(weights_[k] > 0 ? deadline(k) : std::numeric_limits<double>::infinity());
  }
  if (weights_.size() <= kScanSources) {
    const std::size_t padded = (weights_.size() + 7) / 8 * 8;
    scan_weights_ = weights_;
    scan_weights_.resize(padded, 0.0);
    scan_taken_.assign(padded, 0.0);
    scan_due_ = due_;
    scan_due_.resize(padded, std::numeric_limits<double>::infinity());
    return;
  }
  // A ready source's key lies in (t - 1, t + 1 + 1/w] and a waiting one's
  // release in (t, t + 2 + 1/w]: twice that span leaves room for rounding.
  const double span = 2 * (1 / smallest + 8);
  std::uint64_t buckets = 64;
  while (buckets < kMaxBuckets && static_cast<double>(buckets) < span) buckets *= 2;
  if (static_cast<double>(buckets) < span) {
    use_heaps();
    return;
  }
  mode_ = Mode::calendar;
  mask_ = buckets - 1;
  waiting_at_.assign(buckets, kNone);
  ready_at_.assign(buckets, kNone);
  ready_tail_.assign(buckets, kNone);
  link_.assign(weights_.size(), kNone);
  low_ = std::numeric_limits<std::uint64_t>::max();
  for (std::size_t k = 0; k < weights_.size(); ++k) {
    if (weights_[k] > 0 && !ready_in_calendar(k)) {
      use_heaps();
      return;
    }
  }
}

std::size_t Blender::next() {
  switch (mode_) {
    case Mode::scan:
      return next_by_scan();
    case Mode::calendar:
      return next_by_calendar();
    case Mode::heaps:
      break;
  }
  return next_by_heaps();
}

namespace {

using V8 = double __attribute__((vector_size(64)));
using M8 = std::int64_t __attribute__((vector_size(64)));

V8 load8(const double* p) {
  V8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace

// The plain scan, for few sources, where it beats the calendar: the earliest
// due among the eligible (count < w (t + 1)), 8 sources at a time, then the
// first eligible source with that due.
std::size_t Blender::next_by_scan() {
  const double end = static_cast<double>(step_ + 1);
  const V8 vend = {end, end, end, end, end, end, end, end};
  const double inf = std::numeric_limits<double>::infinity();
  const V8 vinf = {inf, inf, inf, inf, inf, inf, inf, inf};
  const std::size_t padded = scan_weights_.size();
  V8 low = vinf;
  for (std::size_t j = 0; j < padded; j += 8) {
    const M8 eligible = load8(scan_taken_.data() + j) < load8(scan_weights_.data() + j) * vend;
    const V8 due = eligible ? load8(scan_due_.data() + j) : vinf;
    low = low < due ? low : due;
  }
  double m = low[0];
  for (int l = 1; l < 8; ++l) m = low[l] < m ? low[l] : m;
  std::size_t best = weights_.size();
  if (m < inf) {
    for (std::size_t k = 0; k < weights_.size(); ++k) {
      if (scan_due_[k] == m && scan_taken_[k] < scan_weights_[k] * end) {
        best = k;
        break;
      }
    }
  } else {  // rounding left nobody behind: the earliest due overall
    for (std::size_t k = 0; k < weights_.size(); ++k) {
      if (weights_[k] > 0 && (best == weights_.size() || due_[k] < due_[best])) best = k;
    }
  }
  ++counts_[best];
  ++step_;
  due_[best] = deadline(best);
  scan_taken_[best] = static_cast<double>(counts_[best]);
  scan_due_[best] = due_[best];
  return best;
}

// The smallest step t with counts < w (t + 1), found with the very expression
// the plain scan evaluates, so that both agree to the last bit.
// `quotient` is count / w when the caller has it (the due time of the pick
// just made), NaN otherwise; it only seeds the search.
std::uint64_t Blender::release(std::size_t k, double quotient) const {
  const double c = static_cast<double>(counts_[k]);
  const double w = weights_[k];
  double guess = std::floor(quotient == quotient ? quotient : c / w) - 1;
  std::uint64_t t = guess > 0 ? static_cast<std::uint64_t>(guess) : 0;
  while (!(c < w * static_cast<double>(t + 1))) ++t;
  while (t > 0 && c < w * static_cast<double>(t)) --t;
  return t;
}

// Files source k under floor(due); false when that would leave the window
// the calendar can tell apart.
bool Blender::ready_in_calendar(std::size_t k) {
  const double d = due_[k];
  if (!(d >= 0 && d < 9e18)) return false;
  const auto key = static_cast<std::uint64_t>(d);
  const std::uint64_t low = std::min(low_, key), high = std::max(high_, key);
  if (high - low > mask_) return false;
  low_ = low, high_ = high;
  // Each bucket's list is kept in (due, index) order, so the earliest is its
  // head. Sources usually come back in that order (equal weights all share
  // one due time until picked), so the tail check makes most insertions O(1).
  const auto before = [&](std::uint32_t a, std::uint32_t b) {
    return due_[a] < due_[b] || (due_[a] == due_[b] && a < b);
  };
  const auto id = static_cast<std::uint32_t>(k);
  const std::size_t bucket = key & mask_;
  std::uint32_t& head = ready_at_[bucket];
  std::uint32_t& tail = ready_tail_[bucket];
  if (head == kNone) {
    head = tail = id;
    link_[k] = kNone;
  } else if (!before(id, tail)) {
    link_[tail] = id;
    link_[k] = kNone;
    tail = id;
  } else {
    std::uint32_t* slot = &head;
    while (!before(id, *slot)) slot = &link_[*slot];
    link_[k] = *slot;
    *slot = id;
  }
  ++ready_count_;
  return true;
}

bool Blender::wait_in_calendar(std::size_t k, std::uint64_t release) {
  if (release - step_ > mask_) return false;
  std::uint32_t& head = waiting_at_[release & mask_];
  link_[k] = head;
  head = static_cast<std::uint32_t>(k);
  return true;
}

std::size_t Blender::next_by_calendar() {
  // Sources eligible from this step on: a waiting bucket holds one release
  // step, as releases lie less than the calendar's length ahead.
  std::uint32_t& waiting = waiting_at_[step_ & mask_];
  for (std::uint32_t k = waiting; k != kNone;) {
    const std::uint32_t after = link_[k];
    if (!ready_in_calendar(k)) {  // the heaps rebuild their state from the counts
      use_heaps();
      return next_by_heaps();
    }
    k = after;
  }
  waiting = kNone;
  if (ready_count_ == 0) {  // rounding left nobody behind: as the heaps handle it
    use_heaps();
    return next_by_heaps();
  }
  while (ready_at_[low_ & mask_] == kNone) ++low_;
  // The lowest key's list starts with the earliest due (lowest index on ties).
  std::uint32_t& head = ready_at_[low_ & mask_];
  const std::size_t best = head;
  head = link_[best];
  --ready_count_;
  ++counts_[best];
  ++step_;
  const double previous_due = due_[best];
  due_[best] = deadline(best);
  const std::uint64_t r = release(best, previous_due);
  const bool filed = r <= step_ ? ready_in_calendar(best) : wait_in_calendar(best, r);
  if (!filed) use_heaps();  // the heaps rebuild their state from the counts
  return best;
}

// The heaps' state is a function of the counts and the step: every source of
// positive weight is ready when its release has come, waiting otherwise.
void Blender::use_heaps() {
  mode_ = Mode::heaps;
  waiting_at_ = {};
  ready_at_ = {};
  ready_tail_ = {};
  link_ = {};
  ready_ = {};
  waiting_ = {};
  for (std::size_t k = 0; k < weights_.size(); ++k) {
    if (weights_[k] <= 0) continue;
    const std::uint64_t r = release(k);
    if (r <= step_) {
      ready_.emplace(deadline(k), k);
    } else {
      waiting_.emplace(r, k);
    }
  }
}

std::size_t Blender::next_by_heaps() {
  while (!waiting_.empty() && waiting_.top().first <= step_) {
    const std::size_t k = waiting_.top().second;
    waiting_.pop();
    ready_.emplace(deadline(k), k);
  }
  std::size_t k = 0;
  if (!ready_.empty()) {
    k = ready_.top().second;
    ready_.pop();
  } else {
    // Only rounding (weights summing to slightly under 1) leaves no source
    // behind its share; take the earliest due, as the plain scan does.
    double best = std::numeric_limits<double>::infinity();
    for (std::size_t j = 0; j < weights_.size(); ++j) {
      if (weights_[j] > 0 && deadline(j) < best) best = deadline(j), k = j;
    }
    std::vector<Waiting> rest;
    while (!waiting_.empty()) {
      if (waiting_.top().second != k) rest.push_back(waiting_.top());
      waiting_.pop();
    }
    for (const auto& r : rest) waiting_.push(r);
  }
  ++counts_[k];
  ++step_;
  due_[k] = deadline(k);
  const std::uint64_t r = release(k);
  if (r <= step_) {
    ready_.emplace(deadline(k), k);
  } else {
    waiting_.emplace(r, k);
  }
  return k;
}

}  // namespace borealis
