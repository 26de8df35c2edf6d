#include "train/validation.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <unordered_map>

#include "core/progress.h"

namespace borealis {

std::vector<Batch> read_valid_batches(const Mixture& valid, int micro, int batches) {
  std::vector<Batch> out(static_cast<std::size_t>(batches));
  const int L = static_cast<int>(valid.options().seq_len);
  for (int b = 0; b < batches; ++b) {
    Batch& batch = out[static_cast<std::size_t>(b)];
    batch.batch = micro;
    batch.seq = L;
    batch.inputs.resize(static_cast<std::size_t>(micro) * L);
    batch.targets.resize(static_cast<std::size_t>(micro) * L);
    for (int r = 0; r < micro; ++r) {
      read_sample(valid, static_cast<std::uint64_t>(b) * micro + r, batch, r);
    }
  }
  return out;
}

// Entropy in nats of the unigram distribution of the validation targets:
// the loss of a model that knows only token frequencies.
double unigram_entropy(const std::vector<Batch>& batches) {
  std::unordered_map<std::int32_t, std::uint64_t> counts;
  std::uint64_t n = 0;
  for (const auto& b : batches) {
    for (const std::int32_t t : b.targets) ++counts[t], ++n;
  }
  double h = 0;
  for (const auto& [t, c] : counts) {
    const double p = static_cast<double>(c) / static_cast<double>(n);
    h -= p * std::log(p);
  }
  return h;
}

// The mean loss over the batches. Rank r of n takes batches r, r + n, ...;
// the losses are gathered and added in batch order, as one process does.
double validate(Model<float>& model, const std::vector<Batch>& batches, bool progress,
                Communicator& comm, Pipeline<float>* pipeline) {
  const std::size_t n = static_cast<std::size_t>(comm.size());
  const std::size_t rank = static_cast<std::size_t>(comm.rank());
  const std::size_t per_rank = (batches.size() + n - 1) / n;
  std::vector<double> mine(per_rank, 0.0), all(per_rank * n);
  if (pipeline != nullptr && rank < batches.size()) {
    // This rank's batches in one buffer, as the pipeline takes them.
    std::vector<std::int32_t> tokens, targets;
    int count = 0;
    for (std::size_t i = rank; i < batches.size(); i += n, ++count) {
      tokens.insert(tokens.end(), batches[i].inputs.begin(), batches[i].inputs.end());
      targets.insert(targets.end(), batches[i].targets.begin(), batches[i].targets.end());
    }
    const std::vector<double> losses = pipeline->evaluate(
        tokens.data(), targets.data(), batches[rank].batch, batches[rank].seq, count);
    std::copy(losses.begin(), losses.end(), mine.begin());
  }
  Progress bar("validation", per_rank, "batches", progress && pipeline == nullptr);
  for (std::size_t k = 0; pipeline == nullptr && k < per_rank; ++k) {
    if (const std::size_t i = k * n + rank; i < batches.size()) {
      const Batch& b = batches[i];
      mine[k] = model.forward(b.inputs.data(), b.targets.data(), b.batch, b.seq, false);
    }
    bar.update(k + 1);
  }
  bar.finish();
  comm.all_gather(std::span<const double>(mine), std::span<double>(all));
  double sum = 0;
  for (std::size_t i = 0; i < batches.size(); ++i) sum += all[(i % n) * per_rank + i / n];
  return sum / static_cast<double>(batches.size());
}

}  // namespace borealis
