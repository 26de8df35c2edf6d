// GPT-2's byte-level alphabet: each of the 256 bytes is written as one
// printable Unicode character ('Ġ' for a space), so that vocabularies and
// merges of arbitrary bytes can be stored as text (encoder.json, vocab.bpe,
// Hugging Face ByteLevel tokenizers).
#pragma once

#include <string>
#include <string_view>

namespace borealis {

// Bytes -> the UTF-8 text of their byte-level characters.
std::string byte_level_encode(std::string_view bytes);

// The inverse; throws Error (naming `where`) for a character outside the alphabet.
std::string byte_level_decode(std::string_view text, const std::string& where);

}  // namespace borealis
