#include "tokenizer/tokenizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>

#include "core/error.h"

namespace borealis {

Tokenizer::Tokenizer(BpeModel model, std::unique_ptr<PreTokenizer> pre,
                     std::vector<AddedToken> added, std::string source_format)
    : model_(std::move(model)),
      pre_(std::move(pre)),
      added_(std::move(added)),
      source_format_(std::move(source_format)) {
  std::stable_sort(added_.begin(), added_.end(), [](const AddedToken& a, const AddedToken& b) {
    return a.text.size() > b.text.size();
  });
  vocab_size_ = model_.size();
  for (const auto& t : added_) {
    if (t.text.empty()) throw Error(fmt::format("added token {} is empty", t.id), source_format_);
    vocab_size_ = std::max<std::size_t>(vocab_size_, std::size_t{t.id} + 1);
    first_byte_[static_cast<unsigned char>(t.text[0])] = true;
  }
}

Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

std::vector<std::uint32_t> Tokenizer::encode(std::string_view text, bool allow_special) const {
  std::vector<std::uint32_t> out;
  out.reserve(text.size() / 3 + 4);
  encode(text, out, allow_special);
  return out;
}

std::size_t Tokenizer::find_added(std::string_view text, std::size_t from, bool allow_special,
                                  const AddedToken*& found) const {
  for (std::size_t i = from; i < text.size(); ++i) {
    if (!first_byte_[static_cast<unsigned char>(text[i])]) continue;
    for (const auto& t : added_) {  // longest first
      if ((allow_special || !t.special) && text.compare(i, t.text.size(), t.text) == 0) {
        found = &t;
        return i;
      }
    }
  }
  return std::string_view::npos;
}

void Tokenizer::encode(std::string_view text, std::vector<std::uint32_t>& out,
                       bool allow_special) const {
  if (added_.empty()) {
    encode_ordinary(text, true, out);
    return;
  }
  std::size_t pos = 0;
  while (pos <= text.size()) {
    const AddedToken* token = nullptr;
    const std::size_t at = find_added(text, pos, allow_special, token);
    if (at == std::string_view::npos) {
      encode_ordinary(text.substr(pos), pos == 0, out);
      return;
    }
    encode_ordinary(text.substr(pos, at - pos), pos == 0, out);
    out.push_back(token->id);
    pos = at + token->text.size();
  }
}

void Tokenizer::encode_ordinary(std::string_view text, bool at_start,
                                std::vector<std::uint32_t>& out) const {
  if (text.empty()) return;
  thread_local std::vector<std::string_view> pieces;
  thread_local std::string normalized;
  if (!normalize_.empty()) {
    normalized.assign(text);
    for (const auto& step : normalize_) {
      if (step.kind == NormalizeStep::Kind::Prepend) {
        if ((!step.first_only || at_start) &&
            !(step.if_missing && normalized.starts_with(step.text))) {
          normalized.insert(0, step.text);
        }
      } else {
        for (std::size_t p = normalized.find(step.text); p != std::string::npos;
             p = normalized.find(step.text, p + step.replacement.size())) {
          normalized.replace(p, step.text.size(), step.replacement);
        }
      }
    }
    text = normalized;
  }
  // In batches, so that a large text's pieces stay in cache between splitting
  // and merging instead of filling memory first (the output is the same).
  constexpr std::size_t kBatch = 4096;
  for (std::size_t pos = 0; pos < text.size();) {
    pieces.clear();
    pos = pre_->split(text, pos, pieces, kBatch);
    for (const auto piece : pieces) model_.encode(piece, out);
  }
}

std::string_view Tokenizer::token_bytes(std::uint32_t id) const {
  for (const auto& t : added_) {
    if (t.id == id) return t.text;
  }
  if (id < model_.size() && !model_.token(id).empty()) return model_.token(id);
  throw Error(fmt::format("token id {} is not in the vocabulary (size {})", id, vocab_size_),
              "decode");
}

void Tokenizer::set_decoder(const DecodeSteps& steps) {
  decode_ = steps;
  decoded_.assign(model_.size(), std::string());
  for (std::uint32_t id = 0; id < model_.size(); ++id) {
    std::string t = model_.token(id);
    unsigned byte = 0;
    if (steps.byte_fallback && t.size() == 6 && t.starts_with("<0x") && t.back() == '>' &&
        std::sscanf(t.c_str(), "<0x%2X>", &byte) == 1) {
      decoded_[id] = std::string(1, static_cast<char>(byte));
      continue;
    }
    for (const auto& [from, to] : steps.replace) {
      for (std::size_t p = t.find(from); p != std::string::npos; p = t.find(from, p + to.size())) {
        t.replace(p, from.size(), to);
      }
    }
    decoded_[id] = std::move(t);
  }
}

std::string Tokenizer::decode(std::span<const std::uint32_t> ids) const {
  std::string out;
  out.reserve(ids.size() * 4);
  for (const std::uint32_t id : ids) {
    if (id < model_.size() && !model_.token(id).empty()) {
      out += decoded_.empty() ? model_.token(id) : decoded_[id];
    } else {
      out += token_bytes(id);
    }
  }
  std::size_t strip = 0;
  while (strip < decode_.strip_start && strip < out.size() && out[strip] == decode_.strip_char)
    ++strip;
  out.erase(0, strip);
  return out;
}

std::optional<std::uint32_t> Tokenizer::added_token_id(std::string_view text) const {
  for (const auto& t : added_) {
    if (t.text == text) return t.id;
  }
  return std::nullopt;
}

std::optional<std::uint32_t> Tokenizer::eod_id() const {
  for (const char* name : {"<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>"}) {
    if (auto id = added_token_id(name)) return id;
  }
  return std::nullopt;
}

}  // namespace borealis
