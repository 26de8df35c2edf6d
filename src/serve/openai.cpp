#include "serve/openai.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mapped_file.h"

namespace borealis {

using nlohmann::json;

namespace {

constexpr int kMaxLogprobs = 20;
constexpr int kMaxN = 16;

const json* field(const json& body, const char* name) {
  const auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

[[noreturn]] void bad(const std::string& param, const std::string& what) {
  throw ApiError(400, fmt::format("'{}' {}", param, what), param);
}

double number(const json& body, const char* name, double fallback, double lo, double hi) {
  const json* v = field(body, name);
  if (v == nullptr) return fallback;
  if (!v->is_number()) bad(name, "must be a number");
  const double x = v->get<double>();
  if (!(x >= lo && x <= hi)) bad(name, fmt::format("must be in [{}, {}], got {}", lo, hi, x));
  return x;
}

std::int64_t integer(const json& body, const char* name, std::int64_t fallback, std::int64_t lo,
                     std::int64_t hi) {
  const json* v = field(body, name);
  if (v == nullptr) return fallback;
  if (!v->is_number_integer()) bad(name, "must be an integer");
  const auto x = v->get<std::int64_t>();
  if (x < lo || x > hi) bad(name, fmt::format("must be in [{}, {}], got {}", lo, hi, x));
  return x;
}

bool boolean(const json& body, const char* name, bool fallback) {
  const json* v = field(body, name);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) bad(name, "must be a boolean");
  return v->get<bool>();
}

SamplingRequest sampling(const json& body, const char* max_tokens_name) {
  SamplingRequest r;
  const json* mt = field(body, max_tokens_name);
  if (mt == nullptr && std::string(max_tokens_name) == "max_completion_tokens") {
    mt = field(body, "max_tokens");
    max_tokens_name = "max_tokens";
  }
  if (mt != nullptr) {
    if (!mt->is_number_integer() || mt->get<std::int64_t>() < 0 ||
        mt->get<std::int64_t>() > (1 << 30)) {
      bad(max_tokens_name, "must be a non-negative integer");
    }
    r.max_tokens = static_cast<int>(mt->get<std::int64_t>());
    r.max_tokens_given = true;
  }
  r.sampling.temperature = static_cast<float>(number(body, "temperature", 1.0, 0.0, 100.0));
  r.sampling.top_p = static_cast<float>(number(body, "top_p", 1.0, 0.0, 1.0));
  if (r.sampling.top_p <= 0.0f) bad("top_p", "must be in (0, 1]");
  // vLLM's top_k: -1 (or 0) means no limit.
  const std::int64_t top_k = integer(body, "top_k", -1, -1, 1 << 30);
  r.sampling.top_k = top_k <= 0 ? 0 : static_cast<int>(top_k);
  if (const json* s = field(body, "seed")) {
    if (!s->is_number_integer()) bad("seed", "must be an integer");
    r.seed = s->is_number_unsigned() ? s->get<std::uint64_t>()
                                     : static_cast<std::uint64_t>(s->get<std::int64_t>());
  }
  if (const json* s = field(body, "stop")) {
    if (s->is_string()) {
      r.stop.push_back(s->get<std::string>());
    } else if (s->is_array()) {
      for (const json& x : *s) {
        if (!x.is_string()) bad("stop", "must be a string or a list of strings");
        r.stop.push_back(x.get<std::string>());
      }
    } else {
      bad("stop", "must be a string or a list of strings");
    }
    for (const std::string& x : r.stop) {
      if (x.empty()) bad("stop", "must not contain empty strings");
    }
  }
  r.n = static_cast<int>(integer(body, "n", 1, 1, kMaxN));
  r.stream = boolean(body, "stream", false);
  r.ignore_eos = boolean(body, "ignore_eos", false);
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) bad("stream_options", "must be an object");
    r.include_usage = boolean(*so, "include_usage", false);
  }
  return r;
}

std::vector<std::int64_t> token_list(const json& v) {
  std::vector<std::int64_t> ids;
  for (const json& x : v) {
    if (!x.is_number_integer()) bad("prompt", "token lists must hold integers");
    ids.push_back(x.get<std::int64_t>());
  }
  return ids;
}

}  // namespace

std::string error_body(const ApiError& e) {
  json err = {{"message", e.what()}, {"type", e.type}, {"code", e.status}};
  err["param"] = e.param.empty() ? json(nullptr) : json(e.param);
  return json{{"error", err}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

json parse_body(const std::string& body) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::parse_error& e) {
    throw ApiError(400, fmt::format("the body is not valid JSON: {}", e.what()));
  }
  if (!j.is_object()) throw ApiError(400, "the body must be a JSON object");
  return j;
}

CompletionRequest parse_completion_request(const json& body) {
  CompletionRequest r;
  const json* p = field(body, "prompt");
  if (p == nullptr) throw ApiError(400, "'prompt' is required", "prompt");
  if (p->is_string()) {
    r.prompts.push_back({p->get<std::string>(), {}, false});
  } else if (p->is_array() && !p->empty() && (*p)[0].is_array()) {
    for (const json& x : *p) {
      if (!x.is_array())
        bad("prompt", "must be a string, a list of strings, a token list or a list of token lists");
      r.prompts.push_back({"", token_list(x), true});
    }
  } else if (p->is_array() && !p->empty() && (*p)[0].is_string()) {
    for (const json& x : *p) {
      if (!x.is_string()) bad("prompt", "a list of prompts must hold only strings");
      r.prompts.push_back({x.get<std::string>(), {}, false});
    }
  } else if (p->is_array() && !p->empty()) {
    r.prompts.push_back({"", token_list(*p), true});
  } else {
    bad("prompt", "must be a string, a list of strings, a token list or a list of token lists");
  }
  r.params = sampling(body, "max_tokens");
  if (const json* lp = field(body, "logprobs")) {
    if (!lp->is_number_integer()) bad("logprobs", "must be an integer");
    const auto n = lp->get<std::int64_t>();
    if (n < 0 || n > kMaxLogprobs) bad("logprobs", fmt::format("must be in [0, {}]", kMaxLogprobs));
    r.logprobs = static_cast<int>(n);
  }
  r.echo = boolean(body, "echo", false);
  return r;
}

ChatRequest parse_chat_request(const json& body) {
  ChatRequest r;
  const json* m = field(body, "messages");
  if (m == nullptr || !m->is_array() || m->empty()) {
    throw ApiError(400, "'messages' must be a non-empty list", "messages");
  }
  for (const json& msg : *m) {
    if (!msg.is_object()) bad("messages", "must hold objects");
    const json* role = field(msg, "role");
    if (role == nullptr || !role->is_string())
      bad("messages", "each message needs a string 'role'");
    ChatMessage out{role->get<std::string>(), ""};
    if (const json* c = field(msg, "content")) {
      if (c->is_string()) {
        out.content = c->get<std::string>();
      } else if (c->is_array()) {
        // Content parts: only text parts can be read by a text model.
        for (const json& part : *c) {
          const json* type = part.is_object() ? field(part, "type") : nullptr;
          if (type == nullptr || *type != "text" || !part.contains("text") ||
              !part["text"].is_string()) {
            bad("messages", "content parts must be {\"type\": \"text\", \"text\": ...}");
          }
          out.content += part["text"].get<std::string>();
        }
      } else {
        bad("messages", "'content' must be a string or a list of text parts");
      }
    }
    r.messages.push_back(std::move(out));
  }
  r.params = sampling(body, "max_completion_tokens");
  r.logprobs = boolean(body, "logprobs", false);
  r.top_logprobs = static_cast<int>(integer(body, "top_logprobs", 0, 0, kMaxLogprobs));
  if (r.top_logprobs > 0 && !r.logprobs) bad("top_logprobs", "needs 'logprobs': true");
  return r;
}

ChatTemplate ChatTemplate::load(const std::string& path) {
  json j;
  try {
    j = json::parse(MappedFile(path).text());
  } catch (const json::exception& e) {
    throw Error(fmt::format("not a chat template: {}", e.what()), path);
  }
  ChatTemplate t;
  const auto text = [&](const char* key, std::string& out) {
    if (!j.contains(key)) return;
    if (!j[key].is_string()) throw Error(fmt::format("'{}' must be a string", key), path);
    out = j[key].get<std::string>();
  };
  if (!j.is_object()) throw Error("a chat template must be a JSON object", path);
  text("message", t.message);
  text("generation_prompt", t.generation_prompt);
  if (t.message.find("{content}") == std::string::npos) {
    throw Error("'message' must contain {content}", path);
  }
  if (j.contains("stop")) {
    if (!j["stop"].is_array()) throw Error("'stop' must be a list of strings", path);
    t.stop.clear();
    for (const json& s : j["stop"]) {
      if (!s.is_string() || s.get<std::string>().empty()) {
        throw Error("'stop' must be a list of non-empty strings", path);
      }
      t.stop.push_back(s.get<std::string>());
    }
  }
  return t;
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages) const {
  std::string out;
  for (const ChatMessage& m : messages) {
    std::string one = message;
    for (const auto& [key, value] : {std::pair<std::string, const std::string*>{"{role}", &m.role},
                                     {"{content}", &m.content}}) {
      // Replace from left to right, never inside text already substituted.
      std::size_t at = 0;
      while ((at = one.find(key, at)) != std::string::npos) {
        one.replace(at, key.size(), *value);
        at += value->size();
      }
    }
    out += one;
  }
  return out + generation_prompt;
}

}  // namespace borealis
