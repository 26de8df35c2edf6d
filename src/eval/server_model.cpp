#include "eval/server_model.h"

#include <fmt/format.h>
#include <httplib.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"

namespace borealis {

using nlohmann::json;

struct ServerModel::Impl {
  ServerModelOptions o;
  std::string origin;  // scheme://host:port
  std::string prefix;  // the path part of the URL, e.g. /v1
  std::string model;
  int max_length = 2048;

  explicit Impl(const ServerModelOptions& opts) : o(opts) {
    std::string url = o.url;
    while (!url.empty() && url.back() == '/') url.pop_back();
    const std::size_t scheme = url.find("://");
    if (url.rfind("http://", 0) != 0 && url.rfind("https://", 0) != 0) {
      throw Error("the server URL must start with http:// or https://", "--server");
    }
    const std::size_t slash = url.find('/', scheme + 3);
    origin = url.substr(0, slash);
    prefix = slash == std::string::npos ? "" : url.substr(slash);
    if (prefix.empty()) prefix = "/v1";
  }

  httplib::Headers headers() const {
    httplib::Headers h;
    if (!o.api_key.empty()) h.emplace("Authorization", "Bearer " + o.api_key);
    return h;
  }

  std::unique_ptr<httplib::Client> client() const {
    auto c = std::make_unique<httplib::Client>(origin);
    const auto secs = static_cast<time_t>(o.timeout_s);
    c->set_read_timeout(secs, 0);
    c->set_write_timeout(secs, 0);
    c->set_connection_timeout(10, 0);
    return c;
  }

  // One call with retries: a dropped connection, 429 and 5xx are retried
  // with back-off; another status is the caller's mistake and reported at once.
  json call(const std::string& method, const std::string& path, const json* body) const {
    std::string last;
    double wait = o.backoff_s;
    for (int attempt = 0; attempt <= o.retries; ++attempt) {
      if (attempt > 0) {
        spdlog::warn("{}{}: {}; retrying in {:.1f} s ({} of {})", origin, path, last, wait, attempt,
                     o.retries);
        std::this_thread::sleep_for(std::chrono::duration<double>(wait));
        wait *= 2;
      }
      auto c = client();
      httplib::Result res = method == "GET"
                                ? c->Get(path, headers())
                                : c->Post(path, headers(), body->dump(), "application/json");
      if (!res) {
        last = "no answer (" + httplib::to_string(res.error()) + ")";
        continue;
      }
      if (res->status == 429 || res->status >= 500) {
        last = fmt::format("HTTP {} {}", res->status, res->body.substr(0, 300));
        continue;
      }
      if (res->status != 200) {
        throw Error(
            fmt::format("the server answered HTTP {}: {}", res->status, res->body.substr(0, 500)),
            origin + path);
      }
      json j = json::parse(res->body, nullptr, false);
      if (j.is_discarded()) throw Error("the server's answer is not JSON", origin + path);
      return j;
    }
    throw Error(fmt::format("the server failed {} times, last: {}", o.retries + 1, last),
                origin + path);
  }

  // Runs fn(chunk index) for chunks of `batch` items on `concurrency` threads.
  void parallel(std::size_t items, const std::function<void(std::size_t, std::size_t)>& fn,
                const ProgressFn& progress) const {
    const auto batch = static_cast<std::size_t>(std::max(1, o.batch));
    const std::size_t chunks = (items + batch - 1) / batch;
    std::atomic<std::size_t> next{0};
    std::atomic<std::size_t> done{0};
    std::mutex mu;
    std::exception_ptr failure;
    const auto worker = [&] {
      for (;;) {
        const std::size_t k = next++;
        if (k >= chunks) return;
        {
          std::lock_guard lock(mu);
          if (failure) return;
        }
        try {
          const std::size_t b = k * batch, e = std::min(items, b + batch);
          fn(b, e);
          const std::size_t d = done += e - b;
          std::lock_guard lock(mu);
          if (progress) progress(d);
        } catch (...) {
          std::lock_guard lock(mu);
          if (!failure) failure = std::current_exception();
          return;
        }
      }
    };
    std::vector<std::thread> threads;
    const auto n = static_cast<std::size_t>(std::max(1, o.concurrency));
    for (std::size_t t = 0; t < std::min(n, chunks); ++t) threads.emplace_back(worker);
    for (std::thread& t : threads) t.join();
    if (failure) std::rethrow_exception(failure);
  }
};

ServerModel::ServerModel(const ServerModelOptions& options)
    : impl_(std::make_unique<Impl>(options)) {
  Impl& im = *impl_;
  const json models = im.call("GET", im.prefix + "/models", nullptr);
  const json* first = nullptr;
  if (models.contains("data") && models["data"].is_array() && !models["data"].empty()) {
    first = &models["data"][0];
  }
  im.model = options.model;
  if (im.model.empty()) {
    if (first == nullptr || !(*first).contains("id")) {
      throw Error("the server lists no models; name one with --model",
                  im.origin + im.prefix + "/models");
    }
    im.model = (*first)["id"].get<std::string>();
  }
  if (options.max_length > 0) {
    im.max_length = options.max_length;
  } else if (first != nullptr && first->contains("max_model_len") &&
             (*first)["max_model_len"].is_number_integer()) {
    im.max_length = (*first)["max_model_len"].get<int>();
  }
}

ServerModel::~ServerModel() = default;

// One token is left for the generated token that max_tokens 1 asks for.
int ServerModel::max_length() const {
  return impl_->max_length - 1;
}

std::string ServerModel::description() const {
  return fmt::format("server {}{} model {}", impl_->origin, impl_->prefix, impl_->model);
}

std::vector<Score> ServerModel::score(const std::vector<ScoreRequest>& requests,
                                      const ProgressFn& progress) {
  Impl& im = *impl_;
  std::vector<Score> out(requests.size());
  const auto L = static_cast<std::size_t>(max_length());
  im.parallel(
      requests.size(),
      [&](std::size_t b, std::size_t e) {
        json prompts = json::array();
        std::vector<std::size_t> ctxlens;
        for (std::size_t i = b; i < e; ++i) {
          const ScoreRequest& r = requests[i];
          std::vector<std::int32_t> all = r.context;
          all.insert(all.end(), r.continuation.begin(), r.continuation.end());
          std::size_t ctxlen = r.context.size();
          if (all.size() > L) {
            // lm-eval's left truncation.
            const std::size_t cut = all.size() - L;
            all.erase(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(cut));
            if (cut >= ctxlen) {
              throw Error(fmt::format("a continuation of {} tokens does not fit the server's "
                                      "context of {}",
                                      r.continuation.size(), L + 1),
                          "request");
            }
            ctxlen -= cut;
          }
          prompts.push_back(all);
          ctxlens.push_back(ctxlen);
        }
        const json body = {{"model", im.model}, {"prompt", prompts}, {"temperature", 0},
                           {"max_tokens", 1},   {"logprobs", 1},     {"seed", 1234},
                           {"echo", true}};
        const json res = im.call("POST", im.prefix + "/completions", &body);
        if (!res.contains("choices") || res["choices"].size() != e - b) {
          throw Error(fmt::format("expected {} choices in the answer", e - b),
                      im.origin + im.prefix + "/completions");
        }
        for (const json& choice : res["choices"]) {
          const std::size_t k = choice.value("index", std::size_t{0});
          if (k >= e - b) throw Error("a choice index out of range", im.origin + "/completions");
          const json& lp = choice["logprobs"];
          const json& tl = lp["token_logprobs"];
          const json& top = lp["top_logprobs"];
          const std::size_t c0 = ctxlens[k];
          const std::size_t n = requests[b + k].continuation.size();
          if (!tl.is_array() || tl.size() < c0 + n) {
            throw Error(
                "the answer has fewer echoed logprobs than prompt tokens (does the "
                "server support echo with logprobs?)",
                im.origin + im.prefix + "/completions");
          }
          Score s{0.0, true};
          for (std::size_t t = c0; t < c0 + n; ++t) {
            const double v = tl[t].get<double>();
            s.logprob += v;
            if (top.is_array() && t < top.size() && top[t].is_object()) {
              double best = -INFINITY;
              for (const auto& [tok, x] : top[t].items()) best = std::max(best, x.get<double>());
              if (v != best) s.is_greedy = false;
            }
          }
          out[b + k] = s;
        }
      },
      progress);
  return out;
}

std::vector<std::string> ServerModel::generate(const std::vector<GenerationTask>& tasks,
                                               const ProgressFn& progress) {
  Impl& im = *impl_;
  std::vector<std::string> out(tasks.size());
  im.parallel(
      tasks.size(),
      [&](std::size_t b, std::size_t e) {
        for (std::size_t i = b; i < e; ++i) {
          const GenerationTask& t = tasks[i];
          const int gen = std::max(1, std::min(t.max_gen_toks, im.max_length - 1));
          const auto keep = static_cast<std::size_t>(im.max_length - gen);
          std::vector<std::int32_t> prompt(t.context.size() > keep
                                               ? t.context.end() - static_cast<std::ptrdiff_t>(keep)
                                               : t.context.begin(),
                                           t.context.end());
          json body = {{"model", im.model},
                       {"prompt", prompt},
                       {"max_tokens", gen},
                       {"temperature", 0},
                       {"seed", 1234}};
          if (!t.until.empty()) body["stop"] = t.until;
          const json res = im.call("POST", im.prefix + "/completions", &body);
          std::string text = res.at("choices").at(0).value("text", "");
          for (const std::string& stop : t.until) {
            if (stop.empty()) continue;
            const std::size_t at = text.find(stop);
            if (at != std::string::npos) text.resize(at);
          }
          out[i] = std::move(text);
        }
      },
      progress);
  return out;
}

class ServerModel::RemoteCodec : public TextCodec {
 public:
  explicit RemoteCodec(const ServerModel::Impl& im) : im_(im) {
    const json info = im_.call("GET", "/tokenizer_info", nullptr);
    if (info.contains("eos_token_id") && info["eos_token_id"].is_number_integer()) {
      eot_ = info["eos_token_id"].get<std::int32_t>();
    }
  }
  std::vector<std::int32_t> encode(const std::string& text) const override {
    const json body = {{"model", im_.model}, {"prompt", text}, {"add_special_tokens", false}};
    const json res = im_.call("POST", "/tokenize", &body);
    return res.at("tokens").get<std::vector<std::int32_t>>();
  }
  std::int32_t end_of_text() const override {
    if (eot_ < 0) {
      throw Error(
          "the server's tokenizer has no end-of-text token, which empty contexts and "
          "perplexity windows condition on",
          im_.origin + "/tokenizer_info");
    }
    return eot_;
  }

 private:
  const ServerModel::Impl& im_;
  std::int32_t eot_ = -1;
};

std::unique_ptr<TextCodec> ServerModel::remote_codec() const {
  return std::make_unique<RemoteCodec>(*impl_);
}

}  // namespace borealis
