// Validation of a training run: the batches of the valid part of the
// mixture, read once, their mean loss (split over the ranks of a
// data-parallel run, added in batch order as one process does), and the
// unigram entropy of their targets (the loss of a model that knows only
// token frequencies).
#pragma once

#include <vector>

#include "data/mixture.h"
#include "dist/communicator.h"
#include "model/model.h"
#include "train/loader.h"
#include "train/pipeline.h"

namespace borealis {

// `batches` micro-batches of `micro` samples of the valid mixture, in order.
std::vector<Batch> read_valid_batches(const Mixture& valid, int micro, int batches);

// Entropy in nats of the unigram distribution of the batches' targets.
double unigram_entropy(const std::vector<Batch>& batches);

// The mean loss over the batches. Rank r of n takes batches r, r + n, ...;
// the losses are gathered and added in batch order. `progress` shows a bar.
// With a pipeline (pipeline parallelism), the rank's batches go through its
// stages together, and every stage gets their losses.
double validate(Model<float>& model, const std::vector<Batch>& batches, bool progress,
                Communicator& comm, Pipeline<float>* pipeline = nullptr);

}  // namespace borealis
