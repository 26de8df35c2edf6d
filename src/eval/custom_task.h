// A lab's own task from a small TOML file, read from JSON Lines in any
// schema. Templates put record fields in braces: {question}, {meta.topic},
// {choices[0]}; {{ and }} are literal braces. Paths are relative to the
// TOML file. Example (docs/eval.md lists every key):
//
//   name = "chem_qa"
//   type = "multiple_choice"     # | loglikelihood | loglikelihood_rolling | generate_until
//   test = "chem/test.jsonl"     # the split scored
//   fewshot = "chem/train.jsonl" # optional: where few-shot examples come from
//   text = "Question: {question}\nAnswer:"
//   choices_field = "options"    # a list field; or choices = ["{a}", "{b}"]
//   gold = "{answer}"            # an index, or the text of one of the choices
//   metrics = ["acc", "acc_norm"]
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "eval/task.h"

namespace borealis {

// Throws Error naming the file and key for a missing or unknown key or a bad value.
TaskSpec load_custom_task(const std::filesystem::path& path);

// Fills a template from a record; Error naming `where` and the field when
// one is missing.
std::string render_template(const std::string& tmpl, const nlohmann::json& doc,
                            const std::string& where);

}  // namespace borealis
