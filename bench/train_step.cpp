// train_step: the training-step benchmark as a standalone program (the same
// code as `borealis bench train`).
//
//   train_step [--model PRESET] [--batch B] [--seq-len T] [--steps N] [--threads N]
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "bench_util.h"
#include "core/error.h"
#include "core/threads.h"
#include "train/train_bench.h"

int main(int argc, char** argv) {
  try {
    borealis::TrainBenchOptions o;
    for (int i = 1; i < argc; ++i) {
      const std::string flag = argv[i];
      if (i + 1 >= argc) throw borealis::Error("missing value", flag);
      const char* value = argv[++i];
      if (flag == "--model") {
        o.model = value;
      } else if (flag == "--batch") {
        o.batch = borealis::bench::parse_positive_int(argv[i - 1], value);
      } else if (flag == "--seq-len" || flag == "--seq") {
        o.seq = borealis::bench::parse_positive_int(argv[i - 1], value);
      } else if (flag == "--steps") {
        o.steps = borealis::bench::parse_positive_int(argv[i - 1], value);
      } else if (flag == "--threads") {
        borealis::set_cpu_threads(borealis::bench::parse_positive_int(argv[i - 1], value));
      } else {
        throw borealis::Error("unknown flag (use --model, --batch, --seq-len, --steps, --threads)",
                              flag);
      }
    }
    std::fputs(borealis::format_train_bench(borealis::run_train_bench(o)).c_str(), stdout);
    return 0;
  } catch (const borealis::Error& e) {
    std::fprintf(stderr, "%s\n", e.line().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
  }
  return 1;
}
