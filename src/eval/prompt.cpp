#include "eval/prompt.h"

#include <fmt/format.h>

#include <map>

#include "core/error.h"
#include "eval/python_random.h"

namespace borealis {

std::vector<DocPrompt> build_prompts(const TaskSpec& task, const std::vector<Doc>& eval_docs,
                                     const std::vector<Doc>* fewshot_docs,
                                     const PromptOptions& options) {
  const std::size_t n_docs =
      options.limit > 0 ? std::min(options.limit, eval_docs.size()) : eval_docs.size();
  const auto k = static_cast<std::size_t>(std::max(0, options.num_fewshot));
  if (k > 0 && task.output == OutputType::kLoglikelihoodRolling) {
    throw Error(
        fmt::format("task {} scores whole documents; it takes no few-shot examples", task.name),
        "--num-fewshot");
  }
  if (k > 0 && (fewshot_docs == nullptr || fewshot_docs->empty())) {
    throw Error(fmt::format("task {} has no few-shot examples to draw from", task.name),
                "--num-fewshot");
  }
  const bool exclude = task.fewshot_excludes_doc();
  if (k > 0) {
    const std::size_t need = task.first_n ? k : k + (exclude ? 1 : 0);
    if (need > fewshot_docs->size()) {
      throw Error(fmt::format("task {}: {} few-shot examples asked for, its {} split has {}",
                              task.name, k, task.fewshot_source(), fewshot_docs->size()),
                  "--num-fewshot");
    }
  }
  std::map<std::size_t, Formatted> shot_cache;
  const auto shot = [&](std::size_t i) -> const Formatted& {
    auto it = shot_cache.find(i);
    if (it == shot_cache.end()) {
      const Doc& d = (*fewshot_docs)[i];
      it = shot_cache.emplace(i, task.format(d.fields, d.where)).first;
    }
    return it->second;
  };
  PythonRandom rnd(options.seed);
  std::vector<DocPrompt> out;
  out.reserve(n_docs);
  for (std::size_t id = 0; id < n_docs; ++id) {
    const Doc& doc = eval_docs[id];
    DocPrompt p;
    p.doc_id = id;
    p.doc = &doc;
    p.formatted = task.format(doc.fields, doc.where);
    const Formatted& f = p.formatted;

    if (k > 0) {
      if (task.first_n) {
        for (std::size_t i = 0; p.fewshot_ids.size() < k && i < fewshot_docs->size(); ++i) {
          p.fewshot_ids.push_back(i);
        }
      } else {
        const std::vector<std::size_t> drawn =
            rnd.sample(fewshot_docs->size(), exclude ? k + 1 : k);
        for (std::size_t i : drawn) {
          if (exclude && (*fewshot_docs)[i].fields == doc.fields) continue;
          if (p.fewshot_ids.size() < k) p.fewshot_ids.push_back(i);
        }
      }
    }
    std::string prefix = f.description;
    for (std::size_t i : p.fewshot_ids) {
      const Formatted& s = shot(i);
      std::string question, answer;
      if (s.multiple_input) {
        question = s.choices[static_cast<std::size_t>(s.gold)];
        answer = s.target;
      } else if (task.output == OutputType::kMultipleChoice) {
        question = s.text;
        answer = s.choices[static_cast<std::size_t>(s.gold)];
      } else {
        question = s.text;
        answer = s.target;
      }
      prefix += question + task.target_delimiter + answer + task.fewshot_delimiter;
    }
    switch (task.output) {
      case OutputType::kMultipleChoice:
        if (f.multiple_input) {
          for (const std::string& c : f.choices) {
            p.pairs.emplace_back(prefix + c, task.target_delimiter + f.target);
          }
        } else {
          for (const std::string& c : f.choices) {
            p.pairs.emplace_back(prefix + f.text, task.target_delimiter + c);
          }
        }
        break;
      case OutputType::kLoglikelihood:
        p.pairs.emplace_back(prefix + f.text, f.target);
        break;
      case OutputType::kLoglikelihoodRolling:
        break;
      case OutputType::kGenerateUntil:
        p.context = prefix + f.text;
        break;
    }
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace borealis
