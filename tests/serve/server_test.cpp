// borealis serve end to end: the real binary on a free loopback port, spoken
// to over HTTP by the test's own client (cpp-httplib). Echo logprobs against
// the training forward, greedy text against the library, streaming against
// non-streaming, a request alone against the same request among 31 others,
// 200 concurrent connections, every error, API keys, a client that leaves
// mid-stream, the queue limit and a SIGTERM drain. Every request loop is
// bounded in count and time.
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <thread>

#include "kernels/backend.h"
#include "model/checkpoint_load.h"
#include "model/inference.h"
#include "model/model.h"
#include "serve/server_process.h"
#include "test_util.h"
#include "tiny_checkpoint.h"

namespace borealis {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

struct Reply {
  int status = 0;
  json body;
  std::string raw;
};

Reply post(int port, const std::string& path, const std::string& body,
           const httplib::Headers& headers = {}) {
  httplib::Client cli("127.0.0.1", port);
  cli.set_read_timeout(120, 0);
  auto res = cli.Post(path.c_str(), headers, body, "application/json");
  Reply r;
  if (!res) {
    r.raw = "no response: " + httplib::to_string(res.error());
    return r;
  }
  r.status = res->status;
  r.raw = res->body;
  r.body = json::parse(res->body, nullptr, false);
  return r;
}

Reply get(int port, const std::string& path) {
  httplib::Client cli("127.0.0.1", port);
  cli.set_read_timeout(30, 0);
  auto res = cli.Get(path.c_str());
  Reply r;
  if (!res) return r;
  r.status = res->status;
  r.raw = res->body;
  r.body = json::parse(res->body, nullptr, false);
  return r;
}

// The data: payloads of an SSE stream.
std::vector<std::string> sse_events(const std::string& body) {
  std::vector<std::string> out;
  std::size_t at = 0;
  while ((at = body.find("data: ", at)) != std::string::npos) {
    const std::size_t end = body.find("\n\n", at);
    out.push_back(body.substr(at + 6, end - at - 6));
    at = end;
  }
  return out;
}

double metric(int port, const std::string& name) {
  const std::string text = get(port, "/metrics").raw;
  const std::size_t at = text.find("\n" + name + " ");
  if (at == std::string::npos) return NAN;
  return std::stod(text.substr(at + name.size() + 2));
}

class Serve : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    tok_ = new Tokenizer(test::tiny_tokenizer());
    test::write_checkpoint(*dir_ / "ckpt", *tok_, 3, true, nullptr, "llama-tiny");
    server_ = new test::ServerProcess(
        *dir_ / "ckpt", {"--max-batch", "32", "--max-queue", "256", "--kv-cache-mb", "16",
                         "--kv-block", "8", "--max-body-mb", "1"});
  }
  static void TearDownTestSuite() {
    delete server_;
    delete tok_;
    delete dir_;
  }
  static int port() { return server_->port(); }
  static std::vector<std::int32_t> ids(const std::string& text) {
    std::vector<std::int32_t> out;
    for (auto id : tok_->encode(text)) out.push_back(static_cast<std::int32_t>(id));
    return out;
  }
  static test::TempDir* dir_;
  static Tokenizer* tok_;
  static test::ServerProcess* server_;
};
test::TempDir* Serve::dir_ = nullptr;
Tokenizer* Serve::tok_ = nullptr;
test::ServerProcess* Serve::server_ = nullptr;

TEST_F(Serve, HealthModelsAndTokenizerEndpoints) {
  EXPECT_EQ(get(port(), "/health").status, 200);
  const Reply models = get(port(), "/v1/models");
  ASSERT_EQ(models.status, 200);
  EXPECT_EQ(models.body["data"][0]["id"], "borealis");
  const std::string text = "The northern lights, and caf\xC3\xA9.";
  const Reply t =
      post(port(), "/tokenize", json{{"prompt", text}, {"add_special_tokens", true}}.dump());
  ASSERT_EQ(t.status, 200) << t.raw;
  EXPECT_EQ(t.body["tokens"].get<std::vector<std::int32_t>>(), ids(text));
  const Reply d = post(port(), "/detokenize", json{{"tokens", t.body["tokens"]}}.dump());
  ASSERT_EQ(d.status, 200);
  EXPECT_EQ(d.body["prompt"], text);
  const Reply info = get(port(), "/tokenizer_info");
  ASSERT_EQ(info.status, 200);
  EXPECT_EQ(info.body["eos_token"], "<|endoftext|>");
  EXPECT_EQ(info.body["vocab_size"], tok_->vocab_size());
}

// lm-evaluation-harness's two request forms score a prompt by its echoed
// logprobs: they must be the training forward's log-softmax.
TEST_F(Serve, EchoLogprobsEqualTheTrainingForward) {
  const std::vector<std::int32_t> prompt = ids("The sky was clear, and the lights danced above");
  const LoadedModel m = load_model_dir(*dir_ / "ckpt");
  auto backend = make_cpu_backend<float>();
  Model<float> model(m.config, *backend);
  std::copy(m.params.begin(), m.params.end(), model.params());
  const int n = static_cast<int>(prompt.size()) - 1;
  model.forward(prompt.data(), prompt.data() + 1, 1, n, false);
  const auto losses = model.losses();
  for (const json& form :
       {json{{"max_tokens", 1}, {"logprobs", 1}, {"temperature", 0}, {"seed", 1234}},
        json{{"max_tokens", 0}, {"logprobs", 10}}}) {
    json body = form;
    body["prompt"] = prompt;
    body["echo"] = true;
    const Reply r = post(port(), "/v1/completions", body.dump());
    ASSERT_EQ(r.status, 200) << r.raw;
    const json& lp = r.body["choices"][0]["logprobs"];
    const int generated = form["max_tokens"].get<int>();
    ASSERT_EQ(lp["token_logprobs"].size(), prompt.size() + static_cast<std::size_t>(generated));
    EXPECT_TRUE(lp["token_logprobs"][0].is_null());
    EXPECT_TRUE(lp["top_logprobs"][0].is_null());
    for (int i = 0; i < n; ++i) {
      EXPECT_NEAR(lp["token_logprobs"][i + 1].get<double>(), -losses[static_cast<std::size_t>(i)],
                  1e-5)
          << "position " << i + 1;
    }
    EXPECT_EQ(r.body["usage"]["prompt_tokens"], prompt.size());
    EXPECT_EQ(r.body["usage"]["completion_tokens"], generated);
    EXPECT_EQ(r.body["choices"][0]["text"].get<std::string>().substr(0, 10),
              tok_->decode(std::vector<std::uint32_t>(prompt.begin(), prompt.end())).substr(0, 10));
  }
}

TEST_F(Serve, GreedyTextMatchesTheLibraryAndStreamingConcatenates) {
  const std::vector<std::int32_t> prompt = ids("Scientists train language models");
  const LoadedModel m = load_model_dir(*dir_ / "ckpt");
  auto backend = make_cpu_backend<float>();
  Inference<float> run(m.config, m.params.data(), *backend);
  std::vector<std::uint32_t> out;
  auto logits = run.prefill(prompt);
  for (int i = 0; i < 12; ++i) {
    const auto first = logits.first(tok_->vocab_size());
    const auto next =
        static_cast<std::int32_t>(std::max_element(first.begin(), first.end()) - first.begin());
    if (static_cast<std::uint32_t>(next) == *tok_->eod_id()) break;
    out.push_back(static_cast<std::uint32_t>(next));
    logits = run.decode(next);
  }
  // A random model's text is not always valid UTF-8: the server answers
  // with the invalid bytes replaced by U+FFFD, as JSON requires.
  const std::string raw = tok_->decode(out);
  const auto sanitized = [](const std::string& bytes) {
    return json::parse(json(bytes).dump(-1, ' ', false, json::error_handler_t::replace))
        .get<std::string>();
  };
  const std::string want = sanitized(raw);
  const json body = {
      {"prompt", "Scientists train language models"}, {"max_tokens", 12}, {"temperature", 0}};
  const Reply r = post(port(), "/v1/completions", body.dump());
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body["choices"][0]["text"], want);
  EXPECT_EQ(r.body["object"], "text_completion");

  json sbody = body;
  sbody["stream"] = true;
  sbody["stream_options"] = {{"include_usage", true}};
  const Reply s = post(port(), "/v1/completions", sbody.dump());
  ASSERT_EQ(s.status, 200);
  const auto events = sse_events(s.raw);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back(), "[DONE]");
  std::string text;
  std::string finish;
  for (std::size_t i = 0; i + 1 < events.size(); ++i) {
    const json e = json::parse(events[i]);
    if (e["choices"].empty()) {
      EXPECT_EQ(e["usage"]["completion_tokens"], r.body["usage"]["completion_tokens"]);
      continue;
    }
    text += e["choices"][0]["text"].get<std::string>();
    if (!e["choices"][0]["finish_reason"].is_null()) finish = e["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(text, want);
  EXPECT_EQ(finish, r.body["choices"][0]["finish_reason"]);

  // A stop string (two ASCII bytes of the greedy text) cuts the text
  // before it, streamed or not.
  std::size_t p = 1;
  while (p + 1 < raw.size() && !(std::isalnum(static_cast<unsigned char>(raw[p])) &&
                                 std::isalnum(static_cast<unsigned char>(raw[p + 1])))) {
    ++p;
  }
  ASSERT_LT(p + 1, raw.size()) << "no two ASCII letters in a row to stop at";
  const std::string stop_at = raw.substr(p, 2);
  json stop = body;
  stop["stop"] = {stop_at, "never seen"};
  const Reply c = post(port(), "/v1/completions", stop.dump());
  ASSERT_EQ(c.status, 200);
  EXPECT_EQ(c.body["choices"][0]["text"], sanitized(raw.substr(0, raw.find(stop_at))));
  EXPECT_EQ(c.body["choices"][0]["finish_reason"], "stop");
  stop["stream"] = true;
  std::string streamed;
  for (const std::string& e : sse_events(post(port(), "/v1/completions", stop.dump()).raw)) {
    if (e != "[DONE]") streamed += json::parse(e)["choices"][0]["text"].get<std::string>();
  }
  EXPECT_EQ(streamed, c.body["choices"][0]["text"]);
}

TEST_F(Serve, ARequestGivesTheSameBitsAloneAndAmong31Others) {
  const json probe = {{"prompt", "The aurora borealis"},
                      {"max_tokens", 16},
                      {"temperature", 0.9},
                      {"seed", 7},
                      {"logprobs", 2}};
  const Reply alone = post(port(), "/v1/completions", probe.dump());
  ASSERT_EQ(alone.status, 200) << alone.raw;
  std::vector<Reply> replies(32);
  std::vector<std::thread> threads;
  for (int i = 0; i < 32; ++i) {
    threads.emplace_back([&, i] {
      json b = probe;
      if (i % 4 != 0) {
        // The ASCII sentences: a cut never splits a character.
        b["prompt"] = test::kTinyCorpus[static_cast<std::size_t>(i) % 3].substr(0, 10 + i);
        b["seed"] = i;
        b["max_tokens"] = 8 + i % 9;
      }
      replies[static_cast<std::size_t>(i)] = post(port(), "/v1/completions", b.dump());
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 32; i += 4) {
    ASSERT_EQ(replies[static_cast<std::size_t>(i)].status, 200);
    EXPECT_EQ(replies[static_cast<std::size_t>(i)].body["choices"][0]["text"],
              alone.body["choices"][0]["text"]);
    // The logprobs as JSON numbers: the same bits print the same digits.
    EXPECT_EQ(replies[static_cast<std::size_t>(i)].body["choices"][0]["logprobs"].dump(),
              alone.body["choices"][0]["logprobs"].dump());
  }
}

TEST_F(Serve, TwoHundredConcurrentConnectionsAreAllAnswered) {
  std::vector<int> status(200, 0);
  std::vector<std::string> errors(200);
  std::vector<std::thread> threads;
  const auto t0 = Clock::now();
  for (int i = 0; i < 200; ++i) {
    threads.emplace_back([&, i] {
      const json b = {
          {"prompt", fmt::format("lights {}", i)}, {"max_tokens", 2}, {"temperature", 0}};
      const Reply r = post(port(), "/v1/completions", b.dump());
      status[static_cast<std::size_t>(i)] = r.status;
      errors[static_cast<std::size_t>(i)] = r.raw;
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 200; ++i) {
    EXPECT_EQ(status[static_cast<std::size_t>(i)], 200)
        << i << ": " << errors[static_cast<std::size_t>(i)];
  }
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 120.0);
}

TEST_F(Serve, ChatCompletionsAndTheirStream) {
  const json body = {{"messages", {{{"role", "user"}, {"content", "The sky?"}}}},
                     {"max_completion_tokens", 6},
                     {"temperature", 0},
                     {"logprobs", true},
                     {"top_logprobs", 2}};
  const Reply r = post(port(), "/v1/chat/completions", body.dump());
  ASSERT_EQ(r.status, 200) << r.raw;
  EXPECT_EQ(r.body["object"], "chat.completion");
  EXPECT_EQ(r.body["choices"][0]["message"]["role"], "assistant");
  const json& content = r.body["choices"][0]["logprobs"]["content"];
  ASSERT_FALSE(content.empty());
  EXPECT_EQ(content[0]["top_logprobs"].size(), 2u);
  json sbody = body;
  sbody["stream"] = true;
  std::string text;
  for (const std::string& e : sse_events(post(port(), "/v1/chat/completions", sbody.dump()).raw)) {
    if (e == "[DONE]") continue;
    const json j = json::parse(e);
    EXPECT_EQ(j["object"], "chat.completion.chunk");
    if (j["choices"][0]["delta"].contains("content")) {
      text += j["choices"][0]["delta"]["content"].get<std::string>();
    }
  }
  EXPECT_EQ(text, r.body["choices"][0]["message"]["content"]);
}

TEST_F(Serve, BadRequestsGetOpenAIErrorsAndTheServerGoesOn) {
  const auto expect_error = [&](const std::string& path, const std::string& body, int status,
                                const std::string& param) {
    const Reply r = post(port(), path, body);
    EXPECT_EQ(r.status, status) << body;
    ASSERT_TRUE(r.body.contains("error")) << r.raw;
    EXPECT_TRUE(r.body["error"]["message"].is_string());
    EXPECT_TRUE(r.body["error"]["type"].is_string());
    if (!param.empty()) {
      EXPECT_EQ(r.body["error"]["param"], param) << r.raw;
    }
  };
  expect_error("/v1/completions", "{not json", 400, "");
  expect_error("/v1/completions", R"({"prompt": "a", "max_tokens": "many"})", 400, "max_tokens");
  expect_error("/v1/completions", R"({"prompt": "a", "temperature": -1})", 400, "temperature");
  expect_error("/v1/completions", R"({"max_tokens": 3})", 400, "prompt");
  expect_error("/v1/completions", R"({"prompt": [1, 2, 99999]})", 400, "prompt");
  expect_error("/v1/completions", R"({"prompt": "a", "n": 100})", 400, "n");
  expect_error("/v1/completions", R"({"prompt": "a", "stop": 5})", 400, "stop");
  expect_error("/v1/completions", R"({"prompt": "a", "max_tokens": 100000})", 400, "prompt");
  const std::string long_prompt = json{{"prompt", std::vector<int>(200, 5)}}.dump();
  expect_error("/v1/completions", long_prompt, 400, "prompt");  // llama-tiny: context 64
  expect_error("/v1/chat/completions", R"({"messages": []})", 400, "messages");
  expect_error("/v1/completions", json{{"prompt", std::string(2 << 20, 'a')}}.dump(), 413, "");
  expect_error("/v1/nothing", "{}", 404, "");
  EXPECT_EQ(get(port(), "/health").status, 200);
  EXPECT_EQ(post(port(), "/v1/completions", R"({"prompt": "a", "max_tokens": 1})").status, 200);
}

// A server of its own: an API key, one sequence at a time, a queue of one.
TEST(ServeLimits, ApiKeyQueueLimitCancelledStreamAndDrain) {
  test::TempDir dir;
  const Tokenizer tok = test::tiny_tokenizer();
  test::write_checkpoint(dir / "ckpt", tok, 4, true, nullptr, "llama-5m");
  test::ServerProcess server(dir / "ckpt", {"--api-key", "s3cret", "--max-batch", "1",
                                            "--max-queue", "1", "--drain-s", "20"});
  const int port = server.port();
  const httplib::Headers auth = {{"Authorization", "Bearer s3cret"}};
  const std::string small = R"({"prompt": "The sky", "max_tokens": 2})";
  EXPECT_EQ(post(port, "/v1/completions", small).status, 401);
  EXPECT_EQ(post(port, "/v1/completions", small, {{"Authorization", "Bearer wrong"}}).status, 401);
  EXPECT_EQ(post(port, "/v1/completions", small, auth).status, 200);

  // Long requests at once: one runs, one waits, the others get 429.
  std::vector<int> status(6, 0);
  {
    std::vector<std::thread> threads;
    for (int i = 0; i < 6; ++i) {
      threads.emplace_back([&, i] {
        status[static_cast<std::size_t>(i)] =
            post(
                port, "/v1/completions",
                R"({"prompt": "The sky", "max_tokens": 600, "temperature": 1, "ignore_eos": true})",
                auth)
                .status;
      });
    }
    for (auto& t : threads) t.join();
  }
  EXPECT_GE(std::count(status.begin(), status.end(), 429), 1);
  EXPECT_GE(std::count(status.begin(), status.end(), 200), 1);

  // A client that leaves mid-stream frees its blocks. 900 tokens past the
  // end-of-text token (a random model samples it within a few hundred): far
  // more than the server makes before it writes the next chunk to the closed
  // connection, so the request ends cancelled, not finished.
  {
    httplib::Client cli("127.0.0.1", port);
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.headers = auth;
    req.body =
        R"({"prompt": "The sky", "max_tokens": 900, "stream": true, "temperature": 1, "ignore_eos": true})";
    req.set_header("Content-Type", "application/json");
    int chunks = 0;
    req.content_receiver = [&](const char*, std::size_t, std::uint64_t, std::uint64_t) {
      return ++chunks < 2;  // leave after the first chunk
    };
    httplib::Response res;
    httplib::Error err;
    cli.send(req, res, err);
    EXPECT_GE(chunks, 1);
  }
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  double used = NAN;
  while (Clock::now() < deadline) {
    used = metric(port, "borealis_kv_cache_blocks_used");
    if (used == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(used, 0);
  EXPECT_GE(metric(port, "borealis_request_success_total{finished_reason=\"cancelled\"}"), 1);

  // SIGTERM while a request runs: it finishes, the server exits 0.
  Reply during;
  std::thread running([&] {
    during = post(port, "/v1/completions", R"({"prompt": "The sky", "max_tokens": 40})", auth);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(server.terminate(30), 0);
  running.join();
  EXPECT_EQ(during.status, 200) << during.raw;
}

}  // namespace
}  // namespace borealis
