// Prompts as lm-evaluation-harness builds them (lm_eval/api/task.py,
// fewshot_context and construct_requests), from a task's Formatted docs:
//
//   description + for each few-shot example: question + target_delimiter
//   + answer + fewshot_delimiter, then the question
//
// and one (context, continuation) pair per choice: target_delimiter + choice
// (multiple choice), each context with the shared continuation (multiple
// input: winogrande), or (context, target) for a loglikelihood task.
//
// Few-shot examples: the first n of the few-shot split (MMLU's dev split),
// or a draw of Python's random.Random(seed).sample over the split, one
// generator per task drawing for the docs in order — so doc i's examples
// depend on the draws for docs 0..i-1, as in lm-eval. Where lm-eval leaves
// the evaluated doc out (few-shot split "equal" to the test split) it draws
// n + 1 and drops the doc itself.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "eval/task.h"

namespace borealis {

struct DocPrompt {
  std::size_t doc_id = 0;  // index in the evaluation split
  const Doc* doc = nullptr;
  Formatted formatted;
  // multiple_choice and loglikelihood: the requests' (context, continuation)
  std::vector<std::pair<std::string, std::string>> pairs;
  std::string context;                   // generate_until: the prompt
  std::vector<std::size_t> fewshot_ids;  // indices into the few-shot split
};

struct PromptOptions {
  int num_fewshot = 0;
  std::uint64_t seed = 1234;  // lm-eval's default fewshot_random_seed
  std::size_t limit = 0;      // first docs only (0 = all)
};

// Formats the docs and builds their prompts. fewshot_docs may be null when
// num_fewshot is 0. Throws Error naming the record for a bad one, and for
// more examples asked for than the few-shot split holds.
std::vector<DocPrompt> build_prompts(const TaskSpec& task, const std::vector<Doc>& eval_docs,
                                     const std::vector<Doc>* fewshot_docs,
                                     const PromptOptions& options);

}  // namespace borealis
