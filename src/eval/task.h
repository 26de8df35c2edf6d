// Evaluation tasks: what lm-evaluation-harness calls a task — a data set
// split, a prompt template and the metrics — for the built-in benchmarks and
// for a lab's own question sets (eval/custom_task.h).
//
// A task reads the data set's own records (JSON Lines, one record per line,
// as Hugging Face `datasets` writes them with to_json) and turns each into a
// Formatted doc: lm-eval's doc_to_text, doc_to_choice and doc_to_target,
// with each task's preprocessing. eval/prompt.h builds the prompts from them.
//
// Data layout under --data-dir: DIR/<task>/<split>.jsonl (also .json,
// .ndjson, and .gz/.zst of these); MMLU as DIR/mmlu/<subject>/<split>.jsonl
// or all subjects in DIR/mmlu/<split>.jsonl with a "subject" field.
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace borealis {

enum class OutputType { kMultipleChoice, kLoglikelihood, kLoglikelihoodRolling, kGenerateUntil };

// lm-eval's name of the output type ("multiple_choice", ...).
const char* output_type_name(OutputType type);

// One record of a data set and where it came from, "file:line", for errors.
struct Doc {
  nlohmann::json fields;
  std::string where;
};

// What a task makes of one record.
struct Formatted {
  std::string text;                  // doc_to_text: the question, without the answer
  std::vector<std::string> choices;  // the answers; with multiple_input, the contexts
  int gold = -1;                     // multiple choice: index of the right choice
  std::string target;                // the continuation (loglikelihood, rolling, generation,
                                     // and the shared continuation of a multiple-input task)
  bool multiple_input = false;       // winogrande: one continuation after each of the contexts
  std::string description;           // put before the few-shot examples
  std::string decontamination_query;
  std::size_t words = 0, bytes = 0;  // rolling: what word and byte perplexity divide by
};

// exact_match's options, as lm-eval passes them to HF evaluate.
struct ExactMatchOptions {
  bool ignore_case = false;
  bool ignore_punctuation = false;
  bool strip = false;  // strip whitespace from the generation first (lm-eval's "strip" filter)
};

struct TaskSpec {
  std::string name;     // "arc_easy", "mmlu_anatomy"
  std::string dataset;  // folder under --data-dir
  std::string subject;  // MMLU: the subject, for files holding every subject
  OutputType output = OutputType::kMultipleChoice;
  std::string training_split, validation_split, test_split, fewshot_split;  // "" = none
  bool first_n = false;  // few-shot examples: the first n of the split, not a random draw
  std::string target_delimiter = " ";
  std::string fewshot_delimiter = "\n\n";
  std::vector<std::string> metrics;  // acc acc_norm perplexity word_perplexity byte_perplexity
                                     // bits_per_byte exact_match
  double version = 1.0;
  std::vector<std::string> until;  // generate_until: stop strings
  int max_gen_toks = 256;
  ExactMatchOptions exact_match;
  std::string source;  // the lm-eval files the prompt follows (docs and results)
  // Explicit files per split (custom tasks); otherwise looked up under --data-dir.
  std::map<std::string, std::filesystem::path> split_files;
  // Turns a record into a Formatted doc; throws Error naming `where` and the
  // field for a record that does not fit the schema.
  std::function<Formatted(const nlohmann::json& doc, const std::string& where)> format;

  const std::string& eval_split() const {
    return test_split.empty() ? validation_split : test_split;
  }
  // The split few-shot examples come from: fewshot_split, else training,
  // else validation, else test (lm-eval's order).
  const std::string& fewshot_source() const;
  // lm-eval leaves the evaluated doc out of its own few-shot draw when the
  // few-shot split "equals" the test split — also when both are unset.
  bool fewshot_excludes_doc() const { return fewshot_split == test_split; }
};

// A group of tasks reported together (MMLU and its categories): its score is
// the mean of its members' weighted by their sizes.
struct TaskGroup {
  std::string name;
  std::vector<std::string> members;  // tasks or groups
};

struct TaskSet {
  std::vector<TaskSpec> tasks;  // in the order they run
  std::vector<TaskGroup> groups;
};

// The tasks named (built-in names, group names such as "mmlu" or
// "mmlu_stem", and the names of the custom tasks given). Throws Error for an
// unknown name, with the closest known one.
TaskSet resolve_tasks(const std::vector<std::string>& names, const std::vector<TaskSpec>& custom);

// Every built-in task and group name, for --help and errors.
std::vector<std::string> builtin_task_names();

// Reads the records of a task's split: the file for the split under
// data_dir (or the custom task's own file), filtered to the MMLU subject.
// Files holding several tasks' records are read once per loader.
class DocLoader {
 public:
  explicit DocLoader(std::filesystem::path data_dir);
  ~DocLoader();
  // Throws Error naming the files looked for when there is none, and file:line
  // for a line that is not a JSON object.
  const std::vector<Doc>& load(const TaskSpec& task, const std::string& split);

 private:
  std::filesystem::path data_dir_;
  std::map<std::string, std::shared_ptr<std::vector<Doc>>> files_;
  std::map<std::string, std::vector<Doc>> subsets_;
};

// Reads a JSON Lines file (BOM and blank lines skipped, .gz/.zst read
// through). Throws Error naming file:line for a line that is not an object.
std::vector<Doc> read_json_lines(const std::filesystem::path& path);

// Field access that names the record and field in its errors.
const nlohmann::json& doc_field(const nlohmann::json& doc, const std::string& key,
                                const std::string& where);
std::string doc_string(const nlohmann::json& doc, const std::string& key, const std::string& where);
std::vector<std::string> doc_strings(const nlohmann::json& doc, const std::string& key,
                                     const std::string& where);

}  // namespace borealis
