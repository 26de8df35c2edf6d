#include "serve/completion.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <random>

#include "core/text.h"

namespace borealis {

using nlohmann::json;

CompletionGroup::CompletionGroup(const Tokenizer& tok, SamplingRequest params, bool chat)
    : tok_(tok), params_(std::move(params)), chat_(chat) {}

int CompletionGroup::vocab_limit(const Engine& engine) const {
  return std::min(engine.config().vocab_size, static_cast<int>(tok_.vocab_size()));
}

void CompletionGroup::add_prompt(std::vector<std::int32_t> ids, const std::string& prefix,
                                 const Engine& engine) {
  const int vocab = vocab_limit(engine);
  if (ids.empty()) throw ApiError(400, "the prompt is empty (no tokens)", "prompt");
  for (std::int32_t id : ids) {
    if (id < 0 || id >= vocab) {
      throw ApiError(400, fmt::format("token id {} is outside the vocabulary [0, {})", id, vocab),
                     "prompt");
    }
  }
  const auto len = static_cast<std::int64_t>(ids.size());
  if (!params_.max_tokens_given && chat_) {
    params_.max_tokens = static_cast<int>(std::max<std::int64_t>(0, engine.max_context() - len));
  }
  if (len + params_.max_tokens > engine.max_context()) {
    throw ApiError(
        400,
        fmt::format("This model's maximum context length is {} tokens. However, you "
                    "requested {} tokens ({} in the prompt, {} in the completion). "
                    "Please reduce the length of the prompt or completion.",
                    engine.max_context(), len + params_.max_tokens, len, params_.max_tokens),
        chat_ ? "messages" : "prompt");
  }
  prompt_tokens_ += len;
  std::random_device rd;
  for (int j = 0; j < params_.n; ++j) {
    Choice c;
    c.prompt = ids;
    c.prefix = prefix;
    c.seed = params_.seed ? *params_.seed + static_cast<std::uint64_t>(j)
                          : (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
    choices_.push_back(std::move(c));
  }
}

std::shared_ptr<CompletionGroup> CompletionGroup::completion(const CompletionRequest& req,
                                                             const Tokenizer& tok,
                                                             const Engine& engine) {
  std::shared_ptr<CompletionGroup> g(new CompletionGroup(tok, req.params, false));
  g->logprobs_ = req.logprobs;
  g->want_logprobs_ = req.logprobs.has_value();
  g->echo_ = req.echo;
  for (const Prompt& p : req.prompts) {
    std::vector<std::int32_t> ids;
    if (p.is_ids) {
      for (std::int64_t id : p.ids) {
        if (id < 0 || id > std::numeric_limits<std::int32_t>::max()) {
          throw ApiError(400, fmt::format("token id {} is outside the vocabulary", id), "prompt");
        }
        ids.push_back(static_cast<std::int32_t>(id));
      }
    } else {
      for (std::uint32_t id : tok.encode(p.text, true))
        ids.push_back(static_cast<std::int32_t>(id));
    }
    std::string prefix;
    if (req.echo) {
      prefix = p.is_ids ? tok.decode(std::vector<std::uint32_t>(ids.begin(), ids.end())) : p.text;
    }
    g->add_prompt(std::move(ids), prefix, engine);
  }
  for (const std::string& s : g->params_.stop) g->max_stop_ = std::max(g->max_stop_, s.size());
  return g;
}

std::shared_ptr<CompletionGroup> CompletionGroup::chat(const ChatRequest& req, const Tokenizer& tok,
                                                       const Engine& engine,
                                                       const ChatTemplate& chat) {
  std::shared_ptr<CompletionGroup> g(new CompletionGroup(tok, req.params, true));
  g->want_logprobs_ = req.logprobs;
  g->logprobs_ = req.top_logprobs;
  for (const std::string& s : chat.stop) g->params_.stop.push_back(s);
  std::vector<std::int32_t> ids;
  for (std::uint32_t id : tok.encode(chat.render(req.messages), true)) {
    ids.push_back(static_cast<std::int32_t>(id));
  }
  g->add_prompt(std::move(ids), "", engine);
  for (const std::string& s : g->params_.stop) g->max_stop_ = std::max(g->max_stop_, s.size());
  return g;
}

void CompletionGroup::start(Engine& engine) {
  const std::optional<std::int32_t> eos = [&]() -> std::optional<std::int32_t> {
    if (const auto e = tok_.eod_id()) return static_cast<std::int32_t>(*e);
    return std::nullopt;
  }();
  {
    const std::lock_guard lock(mu_);
    unfinished_ = static_cast<int>(choices_.size());
  }
  for (std::size_t i = 0; i < choices_.size(); ++i) {
    GenerationRequest r;
    r.prompt = choices_[i].prompt;
    r.max_tokens = params_.max_tokens;
    r.sampling = params_.sampling;
    r.seed = choices_[i].seed;
    r.logprobs = want_logprobs_;
    r.top_logprobs = logprobs_.value_or(0);
    r.prompt_logprobs = echo_ && want_logprobs_;
    if (!params_.ignore_eos) r.eos = eos;
    r.sample_vocab = vocab_limit(engine);
    auto self = shared_from_this();
    r.on_token = [self, i](const TokenEvent& ev) { return self->on_token(i, ev); };
    r.on_finish = [self, i](FinishReason reason) { self->on_finish(i, reason); };
    auto ticket = engine.submit(std::move(r));
    if (!ticket) {
      cancel();
      // The choices never submitted will not finish: count them out.
      const std::lock_guard lock(mu_);
      unfinished_ -= static_cast<int>(choices_.size() - i);
      throw ApiError(429, "the server is busy: the request queue is full (--max-queue)", "",
                     "rate_limit_exceeded");
    }
    const std::lock_guard lock(mu_);
    choices_[i].ticket = std::move(ticket);
  }
}

bool CompletionGroup::on_token(std::size_t i, const TokenEvent& ev) {
  const std::lock_guard lock(mu_);
  Choice& c = choices_[i];
  if (want_logprobs_) c.entries.push_back({ev.token, ev.logprob, ev.top});
  if (ev.prompt) return true;
  c.generated.push_back(static_cast<std::uint32_t>(ev.token));
  const std::string full = tok_.decode(c.generated);
  bool go_on = true;
  std::size_t cut = full.size();
  if (max_stop_ > 0) {
    // A new stop string ends in the new text: search from just before it.
    const std::size_t from = c.text.size() >= max_stop_ ? c.text.size() - max_stop_ + 1 : 0;
    for (const std::string& s : params_.stop) {
      const std::size_t at = full.find(s, from);
      if (at != std::string::npos && at < cut) {
        cut = at;
        go_on = false;
      }
    }
  }
  c.text = full.substr(0, cut);
  if (!go_on) c.stop_hit = true;
  cv_.notify_all();
  return go_on;
}

void CompletionGroup::on_finish(std::size_t i, FinishReason reason) {
  const std::lock_guard lock(mu_);
  choices_[i].finish = reason;
  --unfinished_;
  cv_.notify_all();
}

void CompletionGroup::wait() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return unfinished_ <= 0; });
}

bool CompletionGroup::cancelled() const {
  const std::lock_guard lock(mu_);
  for (const Choice& c : choices_) {
    if (c.finish == FinishReason::kCancelled) return true;
  }
  return false;
}

void CompletionGroup::cancel() {
  const std::lock_guard lock(mu_);
  for (Choice& c : choices_) {
    if (c.ticket) c.ticket->cancel();
  }
}

const char* CompletionGroup::reason_name(const Choice& c) {
  if (c.stop_hit) return "stop";
  if (!c.finish) return nullptr;
  switch (*c.finish) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kCancelled:
      return "abort";
  }
  return nullptr;
}

json CompletionGroup::usage() const {
  std::int64_t generated = 0;
  for (const Choice& c : choices_) generated += static_cast<std::int64_t>(c.generated.size());
  return {{"prompt_tokens", prompt_tokens_},
          {"completion_tokens", generated},
          {"total_tokens", prompt_tokens_ + generated}};
}

// Logprobs of entries [from, to) in the completions (legacy) or chat shape.
json CompletionGroup::logprobs_json(const Choice& c, std::size_t from, std::size_t to) const {
  const auto token_text = [&](std::int32_t id) {
    return std::string(tok_.token_bytes(static_cast<std::uint32_t>(id)));
  };
  if (chat_) {
    json content = json::array();
    for (std::size_t k = from; k < to; ++k) {
      const Entry& e = c.entries[k];
      const auto item = [&](std::int32_t id, double lp) {
        const std::string t = token_text(id);
        std::vector<int> bytes;
        for (const unsigned char ch : t) bytes.push_back(ch);
        return json{{"token", t}, {"logprob", lp}, {"bytes", bytes}};
      };
      json one = item(e.token, e.logprob.value_or(0.0));
      json top = json::array();
      for (const auto& [id, lp] : e.top) top.push_back(item(id, lp));
      one["top_logprobs"] = top;
      content.push_back(one);
    }
    return {{"content", content}};
  }
  json tokens = json::array(), token_logprobs = json::array(), top = json::array(),
       offsets = json::array();
  // Offsets into the choice's text: the token strings laid end to end.
  std::size_t offset = 0;
  for (std::size_t k = 0; k < from; ++k) offset += token_text(c.entries[k].token).size();
  for (std::size_t k = from; k < to; ++k) {
    const Entry& e = c.entries[k];
    const std::string t = token_text(e.token);
    tokens.push_back(t);
    offsets.push_back(offset);
    offset += t.size();
    if (!e.logprob) {
      token_logprobs.push_back(nullptr);
      top.push_back(nullptr);
      continue;
    }
    token_logprobs.push_back(*e.logprob);
    // As OpenAI: the alternatives and the token itself.
    json alts = json::object();
    for (const auto& [id, lp] : e.top) alts[token_text(id)] = lp;
    alts[t] = *e.logprob;
    top.push_back(alts);
  }
  return {{"tokens", tokens},
          {"token_logprobs", token_logprobs},
          {"top_logprobs", top},
          {"text_offset", offsets}};
}

json CompletionGroup::response(const std::string& id, std::int64_t created,
                               const std::string& model) const {
  const std::lock_guard lock(mu_);
  json choices = json::array();
  for (std::size_t i = 0; i < choices_.size(); ++i) {
    const Choice& c = choices_[i];
    json lp = want_logprobs_ ? logprobs_json(c, 0, c.entries.size()) : json(nullptr);
    if (chat_) {
      choices.push_back({{"index", i},
                         {"message", {{"role", "assistant"}, {"content", c.text}}},
                         {"logprobs", lp},
                         {"finish_reason", reason_name(c)}});
    } else {
      choices.push_back({{"index", i},
                         {"text", c.prefix + c.text},
                         {"logprobs", lp},
                         {"finish_reason", reason_name(c)}});
    }
  }
  return {{"id", id},           {"object", chat_ ? "chat.completion" : "text_completion"},
          {"created", created}, {"model", model},
          {"choices", choices}, {"usage", usage()}};
}

std::size_t CompletionGroup::streamable(const Choice& c) const {
  if (c.finish) return c.text.size();
  const std::size_t hold = max_stop_ > 0 ? max_stop_ - 1 : 0;
  const std::size_t end = c.text.size() > hold ? c.text.size() - hold : 0;
  return complete_utf8_prefix(std::string_view(c.text).substr(0, end));
}

std::optional<json> CompletionGroup::next_chunk(const std::string& id, std::int64_t created,
                                                const std::string& model) {
  std::unique_lock lock(mu_);
  const auto chunk = [&](json choice) {
    return json{{"id", id},
                {"object", chat_ ? "chat.completion.chunk" : "text_completion"},
                {"created", created},
                {"model", model},
                {"choices", json::array({std::move(choice)})}};
  };
  for (;;) {
    bool all_closed = true;
    for (std::size_t i = 0; i < choices_.size(); ++i) {
      Choice& c = choices_[i];
      if (c.closed) continue;
      all_closed = false;
      if (chat_ && !c.opened) {
        c.opened = true;
        return chunk({{"index", i},
                      {"delta", {{"role", "assistant"}, {"content", ""}}},
                      {"logprobs", nullptr},
                      {"finish_reason", nullptr}});
      }
      const std::size_t end = streamable(c);
      const bool text_due = end > c.sent || (!chat_ && !c.opened && !c.prefix.empty());
      const bool entries_due = want_logprobs_ && c.entries.size() > c.entries_sent;
      if (text_due || entries_due) {
        std::string delta;
        if (!chat_ && !c.opened) delta = c.prefix;
        c.opened = true;
        delta += c.text.substr(c.sent, end - c.sent);
        json lp =
            want_logprobs_ ? logprobs_json(c, c.entries_sent, c.entries.size()) : json(nullptr);
        c.sent = end;
        c.entries_sent = c.entries.size();
        json choice = {{"index", i}, {"logprobs", lp}, {"finish_reason", nullptr}};
        if (chat_) {
          choice["delta"] = {{"content", delta}};
        } else {
          choice["text"] = delta;
        }
        return chunk(choice);
      }
      if (c.finish) {
        c.closed = true;
        json choice = {{"index", i}, {"logprobs", nullptr}, {"finish_reason", reason_name(c)}};
        if (chat_) {
          choice["delta"] = json::object();
        } else {
          choice["text"] = "";
        }
        return chunk(choice);
      }
    }
    if (all_closed) {
      if (params_.include_usage && !usage_sent_) {
        usage_sent_ = true;
        json last = chunk(json());
        last["choices"] = json::array();
        last["usage"] = usage();
        return last;
      }
      return std::nullopt;
    }
    cv_.wait_for(lock, std::chrono::milliseconds(500));
  }
}

}  // namespace borealis
