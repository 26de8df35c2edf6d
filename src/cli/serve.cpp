// borealis serve: an OpenAI-compatible HTTP endpoint over a checkpoint, with
// continuous batching (src/serve/). Listens first (so /health can say 503
// while the model loads), prints the URL on stdout once the model is ready,
// and on SIGTERM or SIGINT stops taking requests, lets running ones finish
// within --drain-s, and exits 0.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <thread>

#include "cli/commands.h"
#include "core/error.h"
#include "interop/hf_checkpoint.h"
#include "model/checkpoint_load.h"
#include "serve/engine.h"
#include "serve/server.h"
#include "tokenizer/tokenizer.h"

namespace borealis::cli {

namespace {

struct ServeArgs {
  std::string checkpoint;
  ServerOptions server;
  EngineOptions engine;
  std::string chat_template;
  std::string tokenizer;
  double drain_s = 30;
};

void run_serve(ServeArgs& a) {
  if (a.server.api_key.empty()) {
    if (const char* key = std::getenv("BOREALIS_API_KEY")) a.server.api_key = key;
  }
  if (a.server.max_body_mb <= 0) throw Error("must be positive", "--max-body-mb");
  if (a.drain_s < 0) throw Error("must not be negative", "--drain-s");
  if (!a.chat_template.empty()) a.server.chat = ChatTemplate::load(a.chat_template);

  // SIGTERM and SIGINT go to one waiting thread, not to whichever thread the
  // kernel picks: block them here, before any thread starts.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);  // a client that left is a failed write, not a death

  // A worker per request that can be in the batch or the queue, and some for
  // the cheap endpoints; more connections wait for a worker.
  a.server.threads = a.engine.max_batch + a.engine.max_queue + 32;
  Server server(a.server);
  const int port = server.bind();
  const std::string url = fmt::format("http://{}:{}", a.server.host, port);
  spdlog::info("listening on {} while the model loads from {}", url, a.checkpoint);
  std::thread listener([&] { server.listen(); });

  std::unique_ptr<Engine> engine;
  std::unique_ptr<Tokenizer> tok;
  try {
    LoadedModel model = load_any_model(a.checkpoint);
    const std::filesystem::path dir = model.dir;
    if (a.chat_template.empty() && std::filesystem::exists(dir / "chat_template.json")) {
      server.set_chat_template(ChatTemplate::load((dir / "chat_template.json").string()));
    }
    const std::filesystem::path tok_path =
        a.tokenizer.empty() ? dir / "tokenizer.json" : std::filesystem::path(a.tokenizer);
    tok = std::make_unique<Tokenizer>(load_model_tokenizer(tok_path, model.config));
    engine = std::make_unique<Engine>(std::move(model), a.engine);
  } catch (...) {
    server.stop();
    listener.join();
    throw;
  }
  server.set_engine(*engine, *tok);
  const Engine::Load load = engine->load();
  spdlog::info(
      "ready: {} ({}, {} layers, context {}), batch up to {}, key/value cache {} blocks of {} "
      "tokens",
      a.server.model_name, family_name(engine->config().family), engine->config().n_layer,
      engine->max_context(), a.engine.max_batch, load.total_blocks, a.engine.kv_block);
  std::printf("%s/v1\n", url.c_str());
  std::fflush(stdout);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  spdlog::info("{}: draining (at most {:.0f} s)", sig == SIGTERM ? "SIGTERM" : "SIGINT", a.drain_s);
  server.refuse_new();
  engine->drain(a.drain_s);
  server.stop();
  listener.join();
  spdlog::info("stopped");
}

}  // namespace

Command add_serve(CLI::App& parent) {
  auto a = std::make_shared<ServeArgs>();
  CLI::App* app = parent.add_subcommand(
      "serve", "Serve a checkpoint over an OpenAI-compatible HTTP API (continuous batching)");
  app->add_option("--checkpoint", a->checkpoint,
                  "Checkpoint directory, a run directory (its newest complete checkpoint) or a "
                  "Hugging Face GPT-2/Llama directory")
      ->required();
  app->add_option("--host", a->server.host, "Address to listen on")->capture_default_str();
  app->add_option("--port", a->server.port, "Port (0: any free port)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  app->add_option("--api-key", a->server.api_key,
                  "Require 'Authorization: Bearer KEY' (default: $BOREALIS_API_KEY, else none)");
  app->add_option("--model-name", a->server.model_name, "Model id reported by the API")
      ->capture_default_str();
  app->add_option("--max-batch", a->engine.max_batch, "Most sequences decoded together")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_option("--max-queue", a->engine.max_queue,
                  "Most requests waiting for a place; beyond it, HTTP 429")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("--max-context", a->engine.max_context,
                  "Most tokens (prompt + completion) per sequence; 0 = the model's max_seq")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app->add_option("--kv-cache-mb", a->engine.kv_cache_mb, "Key/value cache size in MiB")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_option("--kv-block", a->engine.kv_block, "Tokens per key/value cache block")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_option("--max-body-mb", a->server.max_body_mb,
                  "Largest request body in MiB; beyond it, HTTP 413")
      ->capture_default_str();
  app->add_option("--drain-s", a->drain_s,
                  "On SIGTERM, seconds to let running requests finish before cancelling them")
      ->capture_default_str();
  app->add_option("--chat-template", a->chat_template,
                  "Chat template JSON (default: chat_template.json beside the checkpoint, else "
                  "the built-in <|role|> format; see docs/serve.md)");
  app->add_option("-t,--tokenizer", a->tokenizer,
                  "Tokenizer file (default: the checkpoint's tokenizer.json)");
  app->footer(
      "Prints the base URL (http://HOST:PORT/v1) on stdout once the model is loaded.\n\n"
      "Examples:\n"
      "  borealis serve --checkpoint runs/brown --port 8000\n"
      "  curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\\n"
      "      -d '{\"prompt\": \"The jury said\", \"max_tokens\": 32, \"temperature\": 0}'\n"
      "  lm_eval --model local-completions --model_args \\\n"
      "      "
      "base_url=http://127.0.0.1:8000/v1/completions,tokenizer_backend=remote,model=borealis");
  return {app, [a] { run_serve(*a); }};
}

}  // namespace borealis::cli
