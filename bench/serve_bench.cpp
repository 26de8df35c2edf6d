// serve_bench: drives a running `borealis serve` (or any OpenAI-compatible
// server) over HTTP with N concurrent clients and prints what vLLM's serving
// benchmark prints: request throughput, output tokens/s, time to first token
// (TTFT) and time per output token after the first (TPOT), mean, p50 and p99.
//
//   serve_bench --url http://127.0.0.1:8000 [--concurrency 1,8,32] [--requests 4]
//               [--prompt-tokens 32] [--max-tokens 64] [--api-key KEY] [--seed 1]
//
// Each client sends --requests streamed completions one after another, each
// a prompt of random token ids (never seen before, so no cache helps) and
// ignore_eos, so every request generates exactly --max-tokens tokens. TTFT
// is from sending the request to the first token's chunk; TPOT is (latency
// - TTFT) / (tokens - 1) per request. The last line gives output tokens/s at
// the highest concurrency against concurrency 1, measured in the same run.
// bench/random_checkpoint writes a checkpoint of random weights to serve.
#include <fmt/format.h>
#include <httplib.h>

#include <algorithm>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "core/error.h"
#include "core/text.h"

namespace {

using borealis::Error;
using borealis::bench::Clock;
using nlohmann::json;

struct Sample {
  double ttft = 0, latency = 0;
  int tokens = 0;
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(p / 100.0 * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

struct Target {
  std::string host;
  int port = 0;
  std::string api_key;
  httplib::Headers headers() const {
    httplib::Headers h;
    if (!api_key.empty()) h.emplace("Authorization", "Bearer " + api_key);
    return h;
  }
};

Sample one_request(const Target& t, const std::vector<int>& prompt, int max_tokens) {
  httplib::Client cli(t.host, t.port);
  cli.set_read_timeout(600, 0);
  const json body = {{"prompt", prompt}, {"max_tokens", max_tokens},
                     {"temperature", 0}, {"ignore_eos", true},
                     {"stream", true},   {"stream_options", {{"include_usage", true}}}};
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.headers = t.headers();
  req.set_header("Content-Type", "application/json");
  req.body = body.dump();
  Sample s;
  std::string pending;
  const auto t0 = Clock::now();
  bool first = true;
  req.content_receiver = [&](const char* data, std::size_t n, std::uint64_t, std::uint64_t) {
    pending.append(data, n);
    std::size_t end;
    while ((end = pending.find("\n\n")) != std::string::npos) {
      const std::string event = pending.substr(0, end);
      pending.erase(0, end + 2);
      if (event.rfind("data: ", 0) != 0 || event == "data: [DONE]") continue;
      const json j = json::parse(event.substr(6));
      if (j.contains("usage") && j["usage"].is_object()) {
        s.tokens = j["usage"]["completion_tokens"].get<int>();
      }
      if (first && !j["choices"].empty()) {
        s.ttft = borealis::seconds_since(t0);
        first = false;
      }
    }
    return true;
  };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  if (!cli.send(req, res, err) || res.status != 200) {
    throw Error(fmt::format("request failed: {} {}", res.status, httplib::to_string(err)),
                "/v1/completions");
  }
  s.latency = borealis::seconds_since(t0);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace borealis;
  return bench::main_with_errors(
      [&] {
        std::string url = "http://127.0.0.1:8000";
        std::vector<int> levels = {1, 8, 32};
        int requests = 4, prompt_tokens = 32, max_tokens = 64;
        std::uint64_t seed = 1;
        Target target;
        for (int i = 1; i < argc; ++i) {
          const std::string flag = argv[i];
          if (i + 1 >= argc) throw Error("missing value", flag);
          const char* value = argv[++i];
          if (flag == "--url") {
            url = value;
          } else if (flag == "--concurrency") {
            levels.clear();
            for (const std::string& x : split(value, ',')) {
              levels.push_back(bench::parse_positive_int(flag, x.c_str()));
            }
          } else if (flag == "--requests") {
            requests = bench::parse_positive_int(flag, value);
          } else if (flag == "--prompt-tokens") {
            prompt_tokens = bench::parse_positive_int(flag, value);
          } else if (flag == "--max-tokens") {
            max_tokens = bench::parse_positive_int(flag, value);
          } else if (flag == "--api-key") {
            target.api_key = value;
          } else if (flag == "--seed") {
            seed = static_cast<std::uint64_t>(bench::parse_positive_int(flag, value));
          } else {
            throw Error(
                "unknown flag (use --url, --concurrency, --requests, --prompt-tokens, "
                "--max-tokens, --api-key, --seed)",
                flag);
          }
        }
        const std::string prefix = "http://";
        if (url.rfind(prefix, 0) != 0) throw Error("expected http://HOST:PORT", "--url");
        std::string hostport = url.substr(prefix.size());
        hostport = hostport.substr(0, hostport.find('/'));
        const std::size_t colon = hostport.rfind(':');
        if (colon == std::string::npos) throw Error("expected http://HOST:PORT", "--url");
        target.host = hostport.substr(0, colon);
        target.port = bench::parse_positive_int("--url", hostport.substr(colon + 1).c_str());

        httplib::Client probe(target.host, target.port);
        auto info = probe.Get("/tokenizer_info", target.headers());
        if (!info || info->status != 200) throw Error("no /tokenizer_info answer", url);
        const int vocab = json::parse(info->body)["vocab_size"].get<int>();
        std::mt19937_64 rng(seed);
        std::uniform_int_distribution<int> pick(0, vocab - 2);  // the end-of-text token is last

        fmt::print("server {}, prompts of {} random tokens, {} tokens generated each\n", url,
                   prompt_tokens, max_tokens);
        fmt::print("{:>11} {:>8} {:>9} {:>10} {:>12} {:>22} {:>22}\n", "concurrency", "requests",
                   "seconds", "req/s", "output tok/s", "TTFT ms mean/p50/p99",
                   "TPOT ms mean/p50/p99");
        std::vector<double> throughput;
        for (int c : levels) {
          std::vector<std::vector<int>> prompts(static_cast<std::size_t>(c * requests));
          for (auto& p : prompts) {
            for (int k = 0; k < prompt_tokens; ++k) p.push_back(pick(rng));
          }
          std::vector<Sample> samples(prompts.size());
          std::mutex mu;
          std::string failure;
          const auto t0 = Clock::now();
          std::vector<std::thread> clients;
          for (int k = 0; k < c; ++k) {
            clients.emplace_back([&, k] {
              try {
                for (int r = 0; r < requests; ++r) {
                  const std::size_t at = static_cast<std::size_t>(k * requests + r);
                  samples[at] = one_request(target, prompts[at], max_tokens);
                }
              } catch (const std::exception& e) {
                const std::lock_guard lock(mu);
                failure = e.what();
              }
            });
          }
          for (auto& t : clients) t.join();
          if (!failure.empty()) throw Error(failure, url);
          const double wall = seconds_since(t0);
          std::vector<double> ttft, tpot;
          double tokens = 0;
          for (const Sample& s : samples) {
            ttft.push_back(1e3 * s.ttft);
            if (s.tokens > 1) tpot.push_back(1e3 * (s.latency - s.ttft) / (s.tokens - 1));
            tokens += s.tokens;
          }
          throughput.push_back(tokens / wall);
          fmt::print("{:>11} {:>8} {:>9.2f} {:>10.2f} {:>12.1f} {:>22} {:>22}\n", c, samples.size(),
                     wall, static_cast<double>(samples.size()) / wall, tokens / wall,
                     fmt::format("{:.1f}/{:.1f}/{:.1f}", mean(ttft), percentile(ttft, 50),
                                 percentile(ttft, 99)),
                     fmt::format("{:.1f}/{:.1f}/{:.1f}", mean(tpot), percentile(tpot, 50),
                                 percentile(tpot, 99)));
        }
        if (throughput.size() > 1) {
          fmt::print("output tokens/s at concurrency {} = {:.2f}x concurrency {}\n", levels.back(),
                     throughput.back() / throughput.front(), levels.front());
        }
        return 0;
      },
      "start the server first: borealis serve --checkpoint CKPT --port 8000");
}
