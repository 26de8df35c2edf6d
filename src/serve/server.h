// borealis serve's HTTP side: the OpenAI-compatible endpoints over an Engine
// (cpp-httplib), plus the tokenizer endpoints lm-evaluation-harness's remote
// tokenizer uses, health and Prometheus metrics. See docs/serve.md.
//
//   Server server(options);
//   int port = server.bind();           // listening; /health answers 503
//   server.set_engine(engine, tok);     // the model is loaded: 200
//   server.listen();                    // until stop()
//
// Every endpoint answers errors as {"error": {"message", "type", "param",
// "code"}}: 400 for a malformed request, 401 for a missing or wrong API key,
// 404 for an unknown path, 413 for a body over max_body_mb, 429 when the
// queue is full, 503 while loading or draining.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "serve/engine.h"
#include "serve/openai.h"
#include "tokenizer/tokenizer.h"

namespace borealis {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;      // 0: any free port
  std::string api_key;  // empty: no authentication
  int max_body_mb = 16;
  std::string model_name = "borealis";
  ChatTemplate chat;
  int threads = 0;  // HTTP worker threads (0: enough for the batch and the queue)
};

class Server {
 public:
  explicit Server(ServerOptions options);
  ~Server();

  // Binds the socket; returns the port. Throws Error when it cannot.
  int bind();
  // Replaces the chat template of the options (before set_engine).
  void set_chat_template(ChatTemplate chat);
  // The model is ready: API endpoints and /health start answering.
  void set_engine(Engine& engine, const Tokenizer& tokenizer);
  // New requests get 503 from now on (a drain is under way).
  void refuse_new() { refusing_ = true; }
  // Serves until stop(); returns at once if bind() failed.
  void listen();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::atomic<bool> refusing_{false};
};

}  // namespace borealis
