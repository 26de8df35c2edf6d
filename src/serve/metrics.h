// The server's counters and latency histograms, rendered in the Prometheus
// text exposition format (version 0.0.4) for GET /metrics.
//
// Names follow what serving dashboards expect from vLLM, under the
// borealis_ prefix: request counts by finish reason and by HTTP status,
// prompt and generated token counts, time to first token, time per output
// token and end-to-end request latency as histograms, and gauges for the
// queue, the running sequences and the key/value cache. Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace borealis {

class ServeMetrics {
 public:
  ServeMetrics();

  void request_finished(const std::string& reason, double e2e_seconds);
  void http_response(int status);
  void prompt_tokens(std::int64_t n);
  void generation_tokens(std::int64_t n);
  void time_to_first_token(double seconds);
  void time_per_output_token(double seconds);

  struct Gauges {
    int waiting = 0;
    int running = 0;
    int used_blocks = 0;
    int total_blocks = 0;
  };
  std::string render(const Gauges& gauges) const;

 private:
  struct Histogram {
    std::vector<double> bounds;
    std::vector<std::int64_t> counts;  // per bound, not cumulative
    std::int64_t count = 0;
    double sum = 0;
    void observe(double v);
    void render(std::string& out, const std::string& name, const std::string& help) const;
  };

  mutable std::mutex mu_;
  std::map<std::string, std::int64_t> finished_;
  std::map<int, std::int64_t> http_;
  std::int64_t prompt_tokens_ = 0, generation_tokens_ = 0;
  Histogram ttft_, tpot_, e2e_;
};

}  // namespace borealis
