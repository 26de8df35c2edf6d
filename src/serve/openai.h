// The OpenAI API shapes the server speaks: parsing and checking request
// bodies of /v1/completions and /v1/chat/completions, and the error object.
//
// Fields are read as the OpenAI API (and vLLM, for top_k and the token-id
// prompts) define them; fields this server does not know are ignored, as
// OpenAI clients send many. A known field of the wrong type or out of range
// is an ApiError naming it (HTTP 400, {"error": {"message", "type", "param"}}).
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "serve/sampling.h"

namespace borealis {

class ApiError : public std::runtime_error {
 public:
  ApiError(int http_status, const std::string& message, std::string error_param = "",
           std::string error_type = "invalid_request_error")
      : std::runtime_error(message),
        status(http_status),
        param(std::move(error_param)),
        type(std::move(error_type)) {}
  int status;
  std::string param;
  std::string type;
};

// {"error": {"message", "type", "param", "code"}} as OpenAI answers.
std::string error_body(const ApiError& e);

// A prompt as text or as token ids (then text is empty and is_ids is set).
struct Prompt {
  std::string text;
  std::vector<std::int64_t> ids;
  bool is_ids = false;
};

struct SamplingRequest {
  int max_tokens = 16;
  bool max_tokens_given = false;
  SamplingParams sampling{1.0f, 0, 1.0f};
  std::optional<std::uint64_t> seed;
  std::vector<std::string> stop;
  int n = 1;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool ignore_eos = false;     // vLLM's extension: generate past the end-of-text token
};

struct CompletionRequest {
  std::vector<Prompt> prompts;
  SamplingRequest params;
  std::optional<int> logprobs;  // legacy: alternatives per token
  bool echo = false;
};

struct ChatMessage {
  std::string role;
  std::string content;
};

struct ChatRequest {
  std::vector<ChatMessage> messages;
  SamplingRequest params;
  bool logprobs = false;
  int top_logprobs = 0;
};

// How chat messages become a prompt: each message is `message` with {role}
// and {content} replaced, then `generation_prompt` opens the assistant's
// turn; `stop` strings end the reply (added to the request's own). Read from
// a JSON file {"message": ..., "generation_prompt": ..., "stop": [...]}:
// chat_template.json beside the checkpoint, or --chat-template FILE.
struct ChatTemplate {
  std::string message = "<|{role}|>\n{content}\n";
  std::string generation_prompt = "<|assistant|>\n";
  std::vector<std::string> stop = {"<|user|>", "<|system|>"};

  // Throws Error naming the file and field.
  static ChatTemplate load(const std::string& path);
  std::string render(const std::vector<ChatMessage>& messages) const;
};

// Throw ApiError on a malformed body.
CompletionRequest parse_completion_request(const nlohmann::json& body);
ChatRequest parse_chat_request(const nlohmann::json& body);

// The body as JSON; ApiError(400) naming the parse error otherwise.
nlohmann::json parse_body(const std::string& body);

}  // namespace borealis
