// Sampling: greedy cases, temperature, top-k and top-p on hand-made
// distributions, draw frequencies, seeds, and parameter errors.
#include "serve/sampling.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/error.h"

namespace borealis {
namespace {

// Logits whose softmax is {id 3: 0.5, id 0: 0.25, id 4: 0.15, id 1: 0.1, id 2: 0}.
std::vector<float> hand_made() {
  return {std::log(0.25f), std::log(0.1f), -1e30f, std::log(0.5f), std::log(0.15f)};
}

SamplingParams params(float temperature, int top_k, float top_p) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  return p;
}

std::map<std::int32_t, double> as_map(const std::vector<TokenProb>& dist) {
  std::map<std::int32_t, double> m;
  double sum = 0;
  for (const auto& t : dist) {
    m[t.id] = t.prob;
    sum += t.prob;
  }
  EXPECT_NEAR(sum, 1.0, 1e-12);
  return m;
}

TEST(Sampling, GreedyIsArgmax) {
  const std::vector<float> logits = {0.5f, 2.0f, -1.0f, 2.0f, 1.9f};
  EXPECT_EQ(argmax(logits), 1);  // first of the tied maxima
  for (const auto& p : {params(0.0f, 40, 0.95f), params(1.5f, 1, 1.0f), params(0.0f, 0, 1.0f)}) {
    Sampler s(p, 123);
    for (int i = 0; i < 50; ++i) EXPECT_EQ(s.sample(logits), 1);
    const auto dist = sampling_distribution(logits, p);
    ASSERT_EQ(dist.size(), 1u);
    EXPECT_EQ(dist[0].id, 1);
  }
}

TEST(Sampling, TemperatureOnlyIsTheSoftmax) {
  const auto m = as_map(sampling_distribution(hand_made(), params(1.0f, 0, 1.0f)));
  EXPECT_NEAR(m.at(3), 0.5, 1e-6);
  EXPECT_NEAR(m.at(0), 0.25, 1e-6);
  EXPECT_NEAR(m.at(4), 0.15, 1e-6);
  EXPECT_NEAR(m.at(1), 0.1, 1e-6);
  EXPECT_NEAR(m.at(2), 0.0, 1e-12);
  // Temperature 2: p^(1/2), renormalised.
  const auto hot = as_map(sampling_distribution(hand_made(), params(2.0f, 0, 1.0f)));
  const double z = std::sqrt(0.5) + std::sqrt(0.25) + std::sqrt(0.15) + std::sqrt(0.1);
  EXPECT_NEAR(hot.at(3), std::sqrt(0.5) / z, 1e-6);
  EXPECT_NEAR(hot.at(1), std::sqrt(0.1) / z, 1e-6);
}

TEST(Sampling, TopKKeepsTheKMostLikely) {
  const auto dist = sampling_distribution(hand_made(), params(1.0f, 2, 1.0f));
  ASSERT_EQ(dist.size(), 2u);
  EXPECT_EQ(dist[0].id, 3);
  EXPECT_EQ(dist[1].id, 0);
  EXPECT_NEAR(dist[0].prob, 2.0 / 3.0, 1e-6);
  EXPECT_EQ(sampling_distribution(hand_made(), params(1.0f, 100, 1.0f)).size(), 5u);
}

TEST(Sampling, TopPCutsTheTail) {
  // 0.5 < 0.7 <= 0.75: the two most likely survive.
  auto m = as_map(sampling_distribution(hand_made(), params(1.0f, 0, 0.7f)));
  ASSERT_EQ(m.size(), 2u);
  EXPECT_NEAR(m.at(3), 2.0 / 3.0, 1e-6);
  EXPECT_NEAR(m.at(0), 1.0 / 3.0, 1e-6);
  // 0.75 < 0.8 <= 0.9: three.
  m = as_map(sampling_distribution(hand_made(), params(1.0f, 0, 0.8f)));
  ASSERT_EQ(m.size(), 3u);
  EXPECT_NEAR(m.at(4), 0.15 / 0.9, 1e-6);
  // Below the top token's mass: the top token alone.
  m = as_map(sampling_distribution(hand_made(), params(1.0f, 0, 0.3f)));
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m.begin()->first, 3);
  // Top-p applies to the top-k mass: of {0.5, 0.25, 0.15} (sum 0.9), 0.8 of it is 0.72.
  m = as_map(sampling_distribution(hand_made(), params(1.0f, 3, 0.8f)));
  EXPECT_EQ(m.size(), 2u);
}

TEST(Sampling, DrawsFollowTheDistribution) {
  Sampler s(params(1.0f, 0, 0.7f), 42);
  std::map<std::int32_t, int> counts;
  const int n = 30000;
  for (int i = 0; i < n; ++i) ++counts[s.sample(hand_made())];
  ASSERT_EQ(counts.size(), 2u);  // nothing from the cut tail
  EXPECT_NEAR(counts[3] / static_cast<double>(n), 2.0 / 3.0, 0.015);
  EXPECT_NEAR(counts[0] / static_cast<double>(n), 1.0 / 3.0, 0.015);
}

TEST(Sampling, SeedsReproduce) {
  std::vector<float> logits(1000);
  for (std::size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(static_cast<float>(i));
  auto draw = [&](std::uint64_t seed) {
    Sampler s(params(1.0f, 0, 1.0f), seed);
    std::vector<std::int32_t> out;
    for (int i = 0; i < 64; ++i) out.push_back(s.sample(logits));
    return out;
  };
  EXPECT_EQ(draw(7), draw(7));
  EXPECT_NE(draw(7), draw(8));
}

TEST(Sampling, BadParamsAndLogits) {
  EXPECT_THROW(Sampler(params(-1.0f, 0, 1.0f), 1), Error);
  EXPECT_THROW(Sampler(params(1.0f, -3, 1.0f), 1), Error);
  EXPECT_THROW(Sampler(params(1.0f, 0, 0.0f), 1), Error);
  EXPECT_THROW(Sampler(params(1.0f, 0, 1.5f), 1), Error);
  try {
    params(1.0f, 0, 2.0f).validate();
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.where(), "top_p");
  }
  Sampler s(params(1.0f, 0, 1.0f), 1);
  EXPECT_THROW(s.sample(std::vector<float>{}), Error);
  EXPECT_THROW(s.sample(std::vector<float>{1.0f, NAN}), Error);
}

}  // namespace
}  // namespace borealis
