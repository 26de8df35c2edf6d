#include "serve/server.h"

#include <fmt/format.h>
#include <httplib.h>
#include <spdlog/spdlog.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "core/error.h"
#include "core/text.h"
#include "serve/completion.h"

namespace borealis {

using nlohmann::json;

namespace {

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(error_body(e), "application/json");
}

std::int64_t unix_time() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Debian's compiled cpp-httplib listens with a backlog of 5: a burst of
// connections overflows it and the kernel drops the surplus handshakes,
// which clients see as connections closed unanswered. Linux lets listen() be
// called again on a listening socket to change its backlog; the socket is
// found among this process's descriptors by its port.
void widen_backlog(int port) {
  for (int fd = 0; fd < 4096; ++fd) {
    int listening = 0;
    socklen_t len = sizeof listening;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening) continue;
    sockaddr_storage addr{};
    socklen_t alen = sizeof addr;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &alen) != 0) continue;
    const int bound = addr.ss_family == AF_INET
                          ? ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port)
                          : ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
    if (bound == port) ::listen(fd, SOMAXCONN);
  }
}

}  // namespace

struct Server::Impl {
  ServerOptions options;
  httplib::Server http;
  std::atomic<Engine*> engine{nullptr};
  const Tokenizer* tok = nullptr;
  std::atomic<std::uint64_t> next_id{0};
  std::uint64_t id_salt = std::random_device{}();
  bool bound = false;

  std::string request_id(const char* prefix) {
    return fmt::format("{}-{:08x}{:08x}", prefix, id_salt & 0xffffffffu, next_id++);
  }

  // The engine, or ApiError(503) while loading or draining.
  Engine& ready(const std::atomic<bool>& refusing) {
    Engine* e = engine.load();
    if (e == nullptr) throw ApiError(503, "the model is still loading", "", "server_error");
    if (refusing) throw ApiError(503, "the server is shutting down", "", "server_error");
    return *e;
  }

  void check_key(const httplib::Request& req) const {
    if (options.api_key.empty()) return;
    const std::string want = "Bearer " + options.api_key;
    if (req.get_header_value("Authorization") != want) {
      throw ApiError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')", "",
                     "authentication_error");
    }
  }

  void completions(const httplib::Request& req, httplib::Response& res, Engine& eng, bool chat);
};

Server::Server(ServerOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
  Impl& im = *impl_;
  httplib::Server& http = im.http;
  const int threads = im.options.threads > 0 ? im.options.threads : 320;
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http.set_payload_max_length(static_cast<std::size_t>(im.options.max_body_mb) * 1024 * 1024);
  http.set_read_timeout(30, 0);
  http.set_write_timeout(30, 0);
  http.set_keep_alive_timeout(5);
  // Bodies of errors httplib answers itself (404, 413, ...) in OpenAI's shape.
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    const std::string msg =
        res.status == 404   ? fmt::format("no such endpoint: {} {}", req.method, req.path)
        : res.status == 413 ? std::string("the request body is too large (--max-body-mb)")
                            : fmt::format("HTTP {}", res.status);
    res.set_content(error_body(ApiError(res.status, msg)), "application/json");
  });
  http.set_logger([&im](const httplib::Request&, const httplib::Response& res) {
    if (Engine* e = im.engine.load()) e->metrics().http_response(res.status);
  });

  // Every API handler: key check, readiness, ApiError and Error to JSON.
  const auto api = [this](auto body) {
    return [this, body](const httplib::Request& req, httplib::Response& res) {
      try {
        impl_->check_key(req);
        body(req, res, impl_->ready(refusing_));
      } catch (const ApiError& e) {
        send_error(res, e);
      } catch (const Error& e) {
        send_error(res, ApiError(400, e.what()));
      } catch (const std::exception& e) {
        send_error(res, ApiError(500, e.what(), "", "server_error"));
      }
    };
  };

  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    const bool up = impl_->engine.load() != nullptr && !refusing_;
    res.status = up ? 200 : 503;
    res.set_content(up ? "{\"status\":\"ok\"}" : "{\"status\":\"loading\"}", "application/json");
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    Engine* e = impl_->engine.load();
    if (e == nullptr) {
      res.status = 503;
      res.set_content("# loading\n", "text/plain; version=0.0.4");
      return;
    }
    const Engine::Load l = e->load();
    res.set_content(e->metrics().render({l.waiting, l.running, l.used_blocks, l.total_blocks}),
                    "text/plain; version=0.0.4");
  });
  http.Get("/v1/models", api([this](const httplib::Request&, httplib::Response& res, Engine& e) {
             const json model = {{"id", impl_->options.model_name},
                                 {"object", "model"},
                                 {"created", unix_time()},
                                 {"owned_by", "borealis"},
                                 {"max_model_len", e.max_context()}};
             res.set_content(dump({{"object", "list"}, {"data", json::array({model})}}),
                             "application/json");
           }));
  http.Post(
      "/tokenize", api([this](const httplib::Request& req, httplib::Response& res, Engine& e) {
        const json body = parse_body(req.body);
        if (!body.contains("prompt") || !body["prompt"].is_string()) {
          throw ApiError(400, "'prompt' must be a string", "prompt");
        }
        if (body.contains("add_special_tokens") && !body["add_special_tokens"].is_boolean()) {
          throw ApiError(400, "'add_special_tokens' must be a boolean", "add_special_tokens");
        }
        const auto ids = impl_->tok->encode(body["prompt"].get<std::string>(), true);
        res.set_content(
            dump({{"tokens", ids}, {"count", ids.size()}, {"max_model_len", e.max_context()}}),
            "application/json");
      }));
  http.Post("/detokenize",
            api([this](const httplib::Request& req, httplib::Response& res, Engine&) {
              const json body = parse_body(req.body);
              if (!body.contains("tokens") || !body["tokens"].is_array()) {
                throw ApiError(400, "'tokens' must be a list of token ids", "tokens");
              }
              std::vector<std::uint32_t> ids;
              for (const json& t : body["tokens"]) {
                if (!t.is_number_integer() || t.get<std::int64_t>() < 0 ||
                    t.get<std::int64_t>() >= static_cast<std::int64_t>(impl_->tok->vocab_size())) {
                  throw ApiError(400, fmt::format("token id {} is outside the vocabulary", dump(t)),
                                 "tokens");
                }
                ids.push_back(t.get<std::uint32_t>());
              }
              res.set_content(dump({{"prompt", impl_->tok->decode(ids)}}), "application/json");
            }));
  http.Get("/tokenizer_info",
           api([this](const httplib::Request&, httplib::Response& res, Engine& e) {
             const Tokenizer& tok = *impl_->tok;
             json info = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                          {"vocab_size", tok.vocab_size()},
                          {"model_max_length", e.max_context()},
                          {"eos_token", nullptr},
                          {"eos_token_id", nullptr},
                          {"bos_token", nullptr},
                          {"bos_token_id", nullptr}};
             if (const auto eod = tok.eod_id()) {
               // Byte-level BPE models of the GPT-2 kind use one token for both.
               info["eos_token"] = info["bos_token"] = std::string(tok.token_bytes(*eod));
               info["eos_token_id"] = info["bos_token_id"] = *eod;
             }
             res.set_content(dump(info), "application/json");
           }));
  http.Post("/v1/completions", api([this](const httplib::Request& req, httplib::Response& res,
                                          Engine& e) { impl_->completions(req, res, e, false); }));
  http.Post("/v1/chat/completions",
            api([this](const httplib::Request& req, httplib::Response& res, Engine& e) {
              impl_->completions(req, res, e, true);
            }));
}

Server::~Server() = default;

int Server::bind() {
  Impl& im = *impl_;
  int port = im.options.port;
  if (port == 0) {
    port = im.http.bind_to_any_port(im.options.host);
  } else if (!im.http.bind_to_port(im.options.host, port)) {
    port = -1;
  }
  if (port < 0) {
    throw Error(fmt::format("cannot listen on {}:{} (in use, or not an address of this machine)",
                            im.options.host, im.options.port),
                "--host/--port");
  }
  im.bound = true;
  widen_backlog(port);
  return port;
}

void Server::set_chat_template(ChatTemplate chat) {
  impl_->options.chat = std::move(chat);
}

void Server::set_engine(Engine& engine, const Tokenizer& tokenizer) {
  impl_->tok = &tokenizer;
  impl_->engine = &engine;
}

void Server::listen() {
  if (impl_->bound) impl_->http.listen_after_bind();
}

void Server::stop() {
  // stop() before listen() has started would be lost and listen() would then
  // run forever: wait (briefly) for it to be running first.
  if (impl_->bound) {
    for (int i = 0; i < 500 && !impl_->http.is_running(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  impl_->http.stop();
}

void Server::Impl::completions(const httplib::Request& req, httplib::Response& res, Engine& eng,
                               bool chat) {
  const json body = parse_body(req.body);
  auto group = chat ? CompletionGroup::chat(parse_chat_request(body), *tok, eng, options.chat)
                    : CompletionGroup::completion(parse_completion_request(body), *tok, eng);
  group->start(eng);  // throws ApiError(429) when the queue is full
  const std::string id = request_id(chat ? "chatcmpl" : "cmpl");
  const std::int64_t created = unix_time();
  if (!group->stream()) {
    group->wait();
    if (group->cancelled()) {
      throw ApiError(503, "the request was cancelled: the server is shutting down", "",
                     "server_error");
    }
    res.set_content(dump(group->response(id, created, options.model_name)), "application/json");
    return;
  }
  const std::string model = options.model_name;
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [group, id, created, model](std::size_t, httplib::DataSink& sink) {
        // One event per change; a failed write means the client left.
        for (;;) {
          const std::optional<json> chunk = group->next_chunk(id, created, model);
          if (!chunk) break;
          const std::string line = "data: " + dump(*chunk) + "\n\n";
          if (!sink.write(line.data(), line.size())) {
            group->cancel();
            return false;
          }
        }
        const std::string done = "data: [DONE]\n\n";
        if (!sink.write(done.data(), done.size())) return false;
        sink.done();
        return true;
      },
      [group](bool success) {
        if (!success) group->cancel();
      });
}

}  // namespace borealis
