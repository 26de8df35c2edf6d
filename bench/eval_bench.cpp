// eval_bench: the speed of in-process scoring (borealis eval's loglikelihood
// requests) against the training step's tokens/s for the same model preset,
// random weights, measured in the same run.
//
//   eval_bench [--model PRESET] [--docs N] [--threads N]
//
// Scoring is a forward pass only (a third of a training step's FLOPs), so
// its tokens/s should be well above the training step's; the floor
// is 70% of it. Workloads, as lm-eval sends them:
//   zero-shot multiple choice: contexts of 96 tokens, 4 continuations of 24
//   5-shot multiple choice: contexts of 640 tokens (the part before the last
//     256-token chunk boundary is run once per doc), 4 continuations of 24
//   perplexity: disjoint windows of the model's context, every token scored
// Tokens counted are those run through the model (context + continuation).
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/error.h"
#include "core/threads.h"
#include "eval/evaluator.h"
#include "eval/local_model.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/model.h"
#include "train/train_bench.h"

namespace {

using namespace borealis;

struct Workload {
  std::string name;
  std::vector<ScoreRequest> requests;
  std::size_t tokens = 0;
};

std::uint32_t next(std::uint64_t& s) {
  s = s * 6364136223846793005ULL + 1442695040888963407ULL;
  return static_cast<std::uint32_t>(s >> 33);
}

Workload multiple_choice(const std::string& name, int docs, int context, int vocab,
                         std::uint64_t seed) {
  Workload w{name, {}, 0};
  for (int d = 0; d < docs; ++d) {
    std::vector<std::int32_t> ctx(static_cast<std::size_t>(context));
    for (auto& t : ctx)
      t = static_cast<std::int32_t>(next(seed) % static_cast<std::uint32_t>(vocab));
    for (int c = 0; c < 4; ++c) {
      std::vector<std::int32_t> cont(24);
      for (auto& t : cont)
        t = static_cast<std::int32_t>(next(seed) % static_cast<std::uint32_t>(vocab));
      w.tokens += ctx.size() + cont.size();
      w.requests.push_back({ctx, cont});
    }
  }
  return w;
}

}  // namespace

int main(int argc, char** argv) {
  return bench::main_with_errors(
      [&] {
        std::string preset = "gpt2-124m";
        int docs = 32;
        for (int i = 1; i < argc; ++i) {
          const std::string flag = argv[i];
          if (i + 1 >= argc) throw Error("missing value", flag);
          const char* value = argv[++i];
          if (flag == "--model") {
            preset = value;
          } else if (flag == "--docs") {
            docs = bench::parse_positive_int(flag, value);
          } else if (flag == "--threads") {
            set_cpu_threads(bench::parse_positive_int(flag, value));
          } else {
            throw Error("unknown flag (use --model, --docs, --threads)", flag);
          }
        }
        // The training step, as `borealis bench train` measures it.
        TrainBenchOptions to;
        to.model = preset;
        to.batch = 4;
        to.seq = 256;
        to.steps = 2;
        const TrainBenchResult tr = run_train_bench(to);
        double step_s = 0;
        for (const StepTiming& s : tr.steps) step_s += s.total_s();
        step_s /= static_cast<double>(tr.steps.size());
        const double train_tps = static_cast<double>(tr.batch * tr.seq) / step_s;
        fmt::print("model {} ({:.1f}M params), {} threads\n", preset,
                   static_cast<double>(tr.params) / 1e6, cpu_threads());
        fmt::print("training step (batch {} x seq {}): {:.0f} tokens/s\n", tr.batch, tr.seq,
                   train_tps);

        const ModelConfig config = tr.config;
        auto backend = make_cpu_backend<float>();
        Model<float> m(config, *backend);
        m.init(1);
        LoadedModel loaded{"random", config,
                           std::vector<float>(m.params(), m.params() + m.layout().total())};
        std::vector<Workload> loads;
        loads.push_back(multiple_choice("multiple choice, 0-shot (ctx 96, 4 x 24)", docs, 96,
                                        config.vocab_size, 7));
        loads.push_back(multiple_choice("multiple choice, 5-shot (ctx 640, 4 x 24)", docs / 4, 640,
                                        config.vocab_size, 8));
        {
          Workload w{"perplexity (disjoint windows of the context)", {}, 0};
          std::uint64_t seed = 9;
          std::vector<std::int32_t> doc(static_cast<std::size_t>(config.max_seq) * 4);
          for (auto& t : doc)
            t = static_cast<std::int32_t>(next(seed) %
                                          static_cast<std::uint32_t>(config.vocab_size));
          for (ScoreRequest& r : rolling_windows(doc, 0, config.max_seq)) {
            w.tokens += r.context.size() + r.continuation.size() - 1;
            w.requests.push_back(std::move(r));
          }
          loads.push_back(std::move(w));
        }
        LocalModel model(std::move(loaded), nullptr, "bench");
        for (const Workload& w : loads) {
          const auto t0 = std::chrono::steady_clock::now();
          model.score(w.requests, nullptr);
          const double s =
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          const double tps = static_cast<double>(w.tokens) / s;
          fmt::print(
              "{}: {} requests in {:.2f} s = {:.1f} requests/s, {:.0f} tokens/s = {:.2f}x "
              "the training step\n",
              w.name, w.requests.size(), s, static_cast<double>(w.requests.size()) / s, tps,
              tps / train_tps);
        }
        return 0;
      },
      "");
}
