// generate_bench: the speed of KV-cache inference for a model preset with
// random weights: prefill tokens/s for a prompt, then decode tokens/s and
// ms per token for greedy steps after it (sampling cost included), on the
// CPU backend, and where a decode step's time goes by kind of op.
//
//   generate_bench [--model PRESET] [--prompt N] [--tokens N] [--threads N] [--repeats N]
//                  [--vs-torch] [--python PATH]
//
// --vs-torch also times bench/torch_decode.py (Debian's python3-torch: the
// same preset's shapes, greedy decode with a key/value cache, the same
// prompt length, tokens, threads and repeats) right after, and prints the
// decode ratio.
//
// Decode figures are the best of --repeats runs (the speed when the machine
// leaves us alone) and their mean.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/error.h"
#include "core/threads.h"
#include "kernels/backend.h"
#include "kernels/timed_backend.h"
#include "model/config.h"
#include "model/inference.h"
#include "model/params.h"
#include "serve/sampling.h"

int main(int argc, char** argv) {
  using namespace borealis;
  return bench::main_with_errors(
      [&] {
        std::string preset = "llama-20m";
        int prompt_len = 64, tokens = 128, repeats = 3;
        bool vs_torch = false;
        std::string python = "/usr/bin/python3";
        for (int i = 1; i < argc; ++i) {
          const std::string flag = argv[i];
          if (flag == "--vs-torch") {
            vs_torch = true;
            continue;
          }
          if (i + 1 >= argc) throw Error("missing value", flag);
          const char* value = argv[++i];
          if (flag == "--model") {
            preset = value;
          } else if (flag == "--prompt") {
            prompt_len = bench::parse_positive_int(flag, value);
          } else if (flag == "--tokens") {
            tokens = bench::parse_positive_int(flag, value);
          } else if (flag == "--repeats") {
            repeats = bench::parse_positive_int(flag, value);
          } else if (flag == "--python") {
            python = value;
          } else if (flag == "--threads") {
            set_cpu_threads(bench::parse_positive_int(flag, value));
          } else {
            throw Error("unknown flag (use --model, --prompt, --tokens, --repeats, --threads)",
                        flag);
          }
        }
        const ModelConfig config = model_preset(preset);
        if (prompt_len + tokens > config.max_seq) {
          throw Error(fmt::format("prompt + tokens must fit the context of {}", config.max_seq),
                      "--tokens");
        }
        const ParamLayout layout(config);
        std::vector<float> params(static_cast<std::size_t>(layout.total()));
        init_params(config, layout, params.data(), 1);
        auto cpu = make_cpu_backend<float>();
        TimedBackend<float> backend(*cpu);
        Inference<float> run(config, params.data(), backend);
        std::vector<std::int32_t> prompt;
        for (int i = 0; i < prompt_len; ++i) prompt.push_back((i * 7919 + 13) % config.vocab_size);
        SamplingParams greedy;
        greedy.temperature = 0;

        std::vector<double> prefill_s, decode_s;
        std::map<std::string, double> decode_ops;  // seconds per op over the measured decodes
        for (int r = 0; r <= repeats; ++r) {       // run 0 warms up caches and thread pools
          run.reset();
          const auto t0 = bench::Clock::now();
          std::span<const float> logits = run.prefill(prompt);
          const double p = bench::seconds_since(t0);
          Sampler sampler(greedy, 1);
          backend.reset();
          const auto t1 = bench::Clock::now();
          for (int i = 0; i < tokens; ++i) logits = run.decode(sampler.sample(logits));
          const double d = bench::seconds_since(t1);
          if (r > 0) {
            prefill_s.push_back(p);
            decode_s.push_back(d);
            for (const auto& [op, sec] : backend.seconds()) decode_ops[op] += sec;
          }
        }
        auto best = [](const std::vector<double>& v) {
          return *std::min_element(v.begin(), v.end());
        };
        auto mean = [](const std::vector<double>& v) {
          double s = 0;
          for (double x : v) s += x;
          return s / static_cast<double>(v.size());
        };
        std::printf("%s\n",
                    fmt::format("model {} ({:.1f}M params), {} threads, KV cache {:.1f} MiB",
                                preset, static_cast<double>(layout.total()) / 1e6, cpu_threads(),
                                static_cast<double>(run.cache_bytes()) / (1 << 20))
                        .c_str());
        std::printf("%s\n",
                    fmt::format("prefill {} tokens: {:.1f} tokens/s best, {:.1f} mean", prompt_len,
                                prompt_len / best(prefill_s), prompt_len / mean(prefill_s))
                        .c_str());
        std::printf("%s\n",
                    fmt::format("decode {} tokens after it: {:.1f} tokens/s best "
                                "({:.2f} ms/token), {:.1f} mean ({:.2f} ms/token)",
                                tokens, tokens / best(decode_s), 1e3 * best(decode_s) / tokens,
                                tokens / mean(decode_s), 1e3 * mean(decode_s) / tokens)
                        .c_str());
        const double steps = static_cast<double>(tokens) * repeats;
        std::string split;
        for (const auto& [op, sec] : decode_ops) {
          split += fmt::format("{}{} {:.2f}", split.empty() ? "" : ", ", op, 1e3 * sec / steps);
        }
        std::printf("%s\n", fmt::format("decode ms/token by op (mean): {}", split).c_str());
        if (vs_torch) {
          const std::string script = BOREALIS_SOURCE_DIR "/bench/torch_decode.py";
          const std::string command = fmt::format(
              "OMP_NUM_THREADS={0} {1} {2} --config-json {3} --prompt {4} --tokens {5} "
              "--threads {0} --repeats {6}",
              cpu_threads(), bench::shell_quote(python), bench::shell_quote(script),
              bench::shell_quote(model_config_to_json(config)), prompt_len, tokens, repeats);
          const nlohmann::json t = bench::run_torch_script(command, script, python);
          std::printf("%s\n", fmt::format("PyTorch {} ({} threads): prefill {:.1f} tokens/s best, "
                                          "decode {:.1f} tokens/s best, {:.1f} mean",
                                          t["torch"].get<std::string>(), t["threads"].get<int>(),
                                          t["prefill_tps_best"].get<double>(),
                                          t["decode_tps_best"].get<double>(),
                                          t["decode_tps_mean"].get<double>())
                                  .c_str());
          std::printf("%s\n",
                      fmt::format("decode: Borealis / PyTorch = {:.2f}x best, {:.2f}x mean",
                                  tokens / best(decode_s) / t["decode_tps_best"].get<double>(),
                                  tokens / mean(decode_s) / t["decode_tps_mean"].get<double>())
                          .c_str());
        }
        return 0;
      },
      "model presets: gpt2-124m, gpt2-350m, llama-20m, llama-110m, gpt2-tiny, llama-tiny");
}
