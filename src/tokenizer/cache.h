// A compact binary cache of parsed tokenizers, so that loading a large
// vocabulary (cl100k, o200k, Llama 3) reads one file instead of parsing JSON,
// decoding base64 and rebuilding the merge table.
//
//   Tokenizer tok = load_tokenizer_cached(path, cache_dir, [&] { return parse(path); });
//
// The cache file is named by the source's absolute path and holds a hash of
// the source files' bytes (and of the Borealis build), so an edited source
// makes it stale and it is rebuilt. It is written atomically. A cache that is
// truncated, fails its checksum or does not parse is never trusted: the
// source is loaded instead, with a warning, and the cache rewritten. A cache
// directory that cannot be written only costs the speed.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <string_view>

#include "tokenizer/tokenizer.h"

namespace borealis {

// $BOREALIS_TOKENIZER_CACHE ("off" disables the cache), else
// $XDG_CACHE_HOME/borealis/tokenizers, else ~/.cache/borealis/tokenizers.
// Empty when disabled.
std::filesystem::path default_tokenizer_cache_dir();

// The cache file that serves `source` in `cache_dir`.
std::filesystem::path tokenizer_cache_path(const std::filesystem::path& source,
                                           const std::filesystem::path& cache_dir);

// The tokenizer from the cache when it is present, intact and made from the
// same source bytes; otherwise load_source() (whose result is then cached).
Tokenizer load_tokenizer_cached(const std::filesystem::path& source,
                                const std::filesystem::path& cache_dir,
                                const std::function<Tokenizer()>& load_source);

// The binary form itself (exposed for tests). restore throws Error naming
// `where` for bytes that are not a complete, well-formed tokenizer.
std::string serialize_tokenizer(const Tokenizer& tok);
Tokenizer restore_tokenizer(std::string_view bytes, const std::string& where);

}  // namespace borealis
