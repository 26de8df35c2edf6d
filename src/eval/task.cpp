#include "eval/task.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"
#include "core/text.h"
#include "data/input.h"
#include "eval/pytext.h"

namespace borealis {

using nlohmann::json;

const char* output_type_name(OutputType type) {
  switch (type) {
    case OutputType::kMultipleChoice:
      return "multiple_choice";
    case OutputType::kLoglikelihood:
      return "loglikelihood";
    case OutputType::kLoglikelihoodRolling:
      return "loglikelihood_rolling";
    case OutputType::kGenerateUntil:
      return "generate_until";
  }
  return "?";
}

const std::string& TaskSpec::fewshot_source() const {
  if (!fewshot_split.empty()) return fewshot_split;
  if (!training_split.empty()) return training_split;
  if (!validation_split.empty()) return validation_split;
  return test_split;
}

const json& doc_field(const json& doc, const std::string& key, const std::string& where) {
  const auto it = doc.find(key);
  if (it == doc.end() || it->is_null())
    throw Error(fmt::format("missing field \"{}\"", key), where);
  return *it;
}

std::string doc_string(const json& doc, const std::string& key, const std::string& where) {
  const json& v = doc_field(doc, key, where);
  if (!v.is_string()) throw Error(fmt::format("field \"{}\" is not a string", key), where);
  return v.get<std::string>();
}

std::vector<std::string> doc_strings(const json& doc, const std::string& key,
                                     const std::string& where) {
  const json& v = doc_field(doc, key, where);
  if (!v.is_array()) throw Error(fmt::format("field \"{}\" is not a list", key), where);
  std::vector<std::string> out;
  for (const json& e : v) {
    if (!e.is_string()) throw Error(fmt::format("field \"{}\" holds a non-string", key), where);
    out.push_back(e.get<std::string>());
  }
  return out;
}

namespace {

// An integer field given as a number or as a string of digits ("label": "2").
int doc_int(const json& doc, const std::string& key, const std::string& where) {
  const json& v = doc_field(doc, key, where);
  if (v.is_number_integer()) return v.get<int>();
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (!s.empty() && s.size() < 9 &&
        std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return std::stoi(s);
    }
  }
  throw Error(fmt::format("field \"{}\" is not an integer", key), where);
}

void check_choices(const Formatted& f, const std::string& where) {
  if (f.choices.empty()) throw Error("no choices", where);
  for (std::size_t i = 0; i < f.choices.size(); ++i) {
    if (f.choices[i].empty()) throw Error(fmt::format("choice {} is empty", i), where);
  }
  if (!f.multiple_input && (f.gold < 0 || f.gold >= static_cast<int>(f.choices.size()))) {
    throw Error(
        fmt::format("gold answer index {} is outside the {} choices", f.gold, f.choices.size()),
        where);
  }
}

// hellaswag/utils.py: preprocess().
std::string hellaswag_preprocess(std::string_view text) {
  std::string s = py::strip(text);
  s = py::replace(s, " [title]", ". ");
  s = py::regex_sub("\\[.*?\\]", "", s);
  return py::replace(s, "  ", " ");
}

Formatted hellaswag(const json& doc, const std::string& where) {
  const std::string ctx =
      doc_string(doc, "ctx_a", where) + " " + py::capitalize(doc_string(doc, "ctx_b", where));
  Formatted f;
  f.text = hellaswag_preprocess(doc_string(doc, "activity_label", where) + ": " + ctx);
  for (const std::string& e : doc_strings(doc, "endings", where)) {
    f.choices.push_back(hellaswag_preprocess(e));
  }
  f.gold = doc_int(doc, "label", where);
  f.decontamination_query = f.text;
  check_choices(f, where);
  return f;
}

Formatted arc(const json& doc, const std::string& where) {
  Formatted f;
  f.text = "Question: " + doc_string(doc, "question", where) + "\nAnswer:";
  const json& choices = doc_field(doc, "choices", where);
  f.choices = doc_strings(choices, "text", where);
  const std::vector<std::string> labels = doc_strings(choices, "label", where);
  const std::string key = doc_string(doc, "answerKey", where);
  const auto it = std::find(labels.begin(), labels.end(), key);
  if (it == labels.end()) {
    throw Error(fmt::format("answerKey \"{}\" is not one of choices.label", key), where);
  }
  f.gold = static_cast<int>(it - labels.begin());
  f.decontamination_query = f.text;
  check_choices(f, where);
  return f;
}

Formatted piqa(const json& doc, const std::string& where) {
  Formatted f;
  const std::string goal = doc_string(doc, "goal", where);
  f.text = "Question: " + goal + "\nAnswer:";
  f.choices = {doc_string(doc, "sol1", where), doc_string(doc, "sol2", where)};
  f.gold = doc_int(doc, "label", where);
  f.decontamination_query = goal;
  check_choices(f, where);
  return f;
}

// winogrande/preprocess_winogrande.py: the blank filled by each option is
// the context; the rest of the sentence is the continuation.
Formatted winogrande(const json& doc, const std::string& where) {
  const std::string sentence = doc_string(doc, "sentence", where);
  const std::size_t idx = sentence.find('_');
  if (idx == std::string::npos) throw Error("field \"sentence\" has no blank \"_\"", where);
  Formatted f;
  f.multiple_input = true;
  f.choices = {sentence.substr(0, idx) + doc_string(doc, "option1", where),
               sentence.substr(0, idx) + doc_string(doc, "option2", where)};
  f.target = py::strip(sentence.substr(idx + 1));
  const std::string answer = doc_string(doc, "answer", where);
  if (answer != "1" && answer != "2") {
    throw Error(fmt::format("field \"answer\" is \"{}\", not \"1\" or \"2\"", answer), where);
  }
  f.gold = answer == "1" ? 0 : 1;
  f.decontamination_query = sentence;
  check_choices(f, where);
  return f;
}

Formatted lambada(const json& doc, const std::string& where) {
  const std::string text = doc_string(doc, "text", where);
  const std::vector<std::string> words = py::split(text, " ");
  Formatted f;
  for (std::size_t i = 0; i + 1 < words.size(); ++i) {
    if (i > 0) f.text += ' ';
    f.text += words[i];
  }
  f.target = " " + words.back();
  f.decontamination_query = text;
  return f;
}

Formatted sciq(const json& doc, const std::string& where) {
  Formatted f;
  const std::string support = doc_string(doc, "support", where);
  const std::string question = doc_string(doc, "question", where);
  f.text = py::lstrip(support) + "\nQuestion: " + question + "\nAnswer:";
  f.choices = {doc_string(doc, "distractor1", where), doc_string(doc, "distractor2", where),
               doc_string(doc, "distractor3", where), doc_string(doc, "correct_answer", where)};
  f.gold = 3;
  f.decontamination_query = support + " " + question;
  check_choices(f, where);
  return f;
}

// bigbio/pubmed_qa's source schema (QUESTION, CONTEXTS), which lm-eval reads;
// qiaojin/PubMedQA's (question, context.contexts) is taken too.
Formatted pubmedqa(const json& doc, const std::string& where) {
  std::vector<std::string> contexts;
  std::string question;
  if (doc.contains("QUESTION")) {
    question = doc_string(doc, "QUESTION", where);
    contexts = doc_strings(doc, "CONTEXTS", where);
  } else {
    question = doc_string(doc, "question", where);
    contexts = doc_strings(doc_field(doc, "context", where), "contexts", where);
  }
  Formatted f;
  std::string abstract;
  for (std::size_t i = 0; i < contexts.size(); ++i) {
    if (i > 0) abstract += '\n';
    abstract += contexts[i];
  }
  f.text = "Abstract: " + abstract + "\nQuestion: " + question + "\nAnswer:";
  f.choices = {"yes", "no", "maybe"};
  const std::string decision = doc_string(doc, "final_decision", where);
  const auto it = std::find(f.choices.begin(), f.choices.end(), decision);
  if (it == f.choices.end()) {
    throw Error(fmt::format("field \"final_decision\" is \"{}\", not yes, no or maybe", decision),
                where);
  }
  f.gold = static_cast<int>(it - f.choices.begin());
  f.decontamination_query = f.text;
  return f;
}

Formatted mmlu(const json& doc, const std::string& where, const std::string& subject) {
  Formatted f;
  const std::vector<std::string> c = doc_strings(doc, "choices", where);
  if (c.size() < 4) throw Error("field \"choices\" has fewer than 4 answers", where);
  f.text = fmt::format("{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:",
                       py::strip(doc_string(doc, "question", where)), c[0], c[1], c[2], c[3]);
  f.choices = {"A", "B", "C", "D"};
  f.gold = doc_int(doc, "answer", where);
  f.description = "The following are multiple choice questions (with answers) about " +
                  py::replace(subject, "_", " ") + ".\n\n";
  f.decontamination_query = f.text;
  check_choices(f, where);
  return f;
}

// wikitext/preprocess_wikitext.py: wikitext_detokenizer (PCRE2 spellings of
// the same patterns; "$1" for Python's "\1").
std::string wikitext_detokenize(std::string s) {
  s = py::replace(s, "s '", "s'");
  s = py::regex_sub("/' [0-9]/", "/'[0-9]/", s);
  s = py::replace(s, " @-@ ", "-");
  s = py::replace(s, " @,@ ", ",");
  s = py::replace(s, " @.@ ", ".");
  s = py::replace(s, " : ", ": ");
  s = py::replace(s, " ; ", "; ");
  s = py::replace(s, " . ", ". ");
  s = py::replace(s, " ! ", "! ");
  s = py::replace(s, " ? ", "? ");
  s = py::replace(s, " , ", ", ");
  s = py::regex_sub("\\(\\s*([^\\)]*?)\\s*\\)", "($1)", s);
  s = py::regex_sub("\\[\\s*([^\\]]*?)\\s*\\]", "[$1]", s);
  s = py::regex_sub("{\\s*([^}]*?)\\s*}", "{$1}", s);
  s = py::regex_sub("\"\\s*([^\"]*?)\\s*\"", "\"$1\"", s);
  s = py::regex_sub("'\\s*([^']*?)\\s*'", "'$1'", s);
  s = py::replace(s, "= = = =", "====");
  s = py::replace(s, "= = =", "===");
  s = py::replace(s, "= =", "==");
  s = py::replace(s, " \xC2\xB0 ", "\xC2\xB0");
  s = py::replace(s, " \n", "\n");
  s = py::replace(s, "\n ", "\n");
  s = py::replace(s, " N ", " 1 ");
  return py::replace(s, " 's", "'s");
}

Formatted wikitext(const json& doc, const std::string& where) {
  const std::string page = doc_string(doc, "page", where);
  Formatted f;
  f.target = wikitext_detokenize(page);
  // Counted on the page before detokenizing, as lm-eval's process_results does.
  f.words = py::count_words(page);
  f.bytes = page.size();
  f.decontamination_query = page;
  return f;
}

TaskSpec multiple_choice(std::string name, std::string dataset, std::string train,
                         std::string validation, std::string test, std::string source,
                         std::function<Formatted(const json&, const std::string&)> format,
                         std::vector<std::string> metrics = {"acc", "acc_norm"}) {
  TaskSpec t;
  t.name = std::move(name);
  t.dataset = std::move(dataset);
  t.training_split = std::move(train);
  t.validation_split = std::move(validation);
  t.test_split = std::move(test);
  t.source = std::move(source);
  t.format = std::move(format);
  t.metrics = std::move(metrics);
  return t;
}

struct MmluSubject {
  const char* name;
  const char* category;
};

// lm_eval/tasks/mmlu/default/mmlu_<subject>.yaml: each subject's category tag.
constexpr MmluSubject kMmluSubjects[] = {{"abstract_algebra", "stem"},
                                         {"anatomy", "stem"},
                                         {"astronomy", "stem"},
                                         {"business_ethics", "other"},
                                         {"clinical_knowledge", "other"},
                                         {"college_biology", "stem"},
                                         {"college_chemistry", "stem"},
                                         {"college_computer_science", "stem"},
                                         {"college_mathematics", "stem"},
                                         {"college_medicine", "other"},
                                         {"college_physics", "stem"},
                                         {"computer_security", "stem"},
                                         {"conceptual_physics", "stem"},
                                         {"econometrics", "social_sciences"},
                                         {"electrical_engineering", "stem"},
                                         {"elementary_mathematics", "stem"},
                                         {"formal_logic", "humanities"},
                                         {"global_facts", "other"},
                                         {"high_school_biology", "stem"},
                                         {"high_school_chemistry", "stem"},
                                         {"high_school_computer_science", "stem"},
                                         {"high_school_european_history", "humanities"},
                                         {"high_school_geography", "social_sciences"},
                                         {"high_school_government_and_politics", "social_sciences"},
                                         {"high_school_macroeconomics", "social_sciences"},
                                         {"high_school_mathematics", "stem"},
                                         {"high_school_microeconomics", "social_sciences"},
                                         {"high_school_physics", "stem"},
                                         {"high_school_psychology", "social_sciences"},
                                         {"high_school_statistics", "stem"},
                                         {"high_school_us_history", "humanities"},
                                         {"high_school_world_history", "humanities"},
                                         {"human_aging", "other"},
                                         {"human_sexuality", "social_sciences"},
                                         {"international_law", "humanities"},
                                         {"jurisprudence", "humanities"},
                                         {"logical_fallacies", "humanities"},
                                         {"machine_learning", "stem"},
                                         {"management", "other"},
                                         {"marketing", "other"},
                                         {"medical_genetics", "other"},
                                         {"miscellaneous", "other"},
                                         {"moral_disputes", "humanities"},
                                         {"moral_scenarios", "humanities"},
                                         {"nutrition", "other"},
                                         {"philosophy", "humanities"},
                                         {"prehistory", "humanities"},
                                         {"professional_accounting", "other"},
                                         {"professional_law", "humanities"},
                                         {"professional_medicine", "other"},
                                         {"professional_psychology", "social_sciences"},
                                         {"public_relations", "social_sciences"},
                                         {"security_studies", "social_sciences"},
                                         {"sociology", "social_sciences"},
                                         {"us_foreign_policy", "social_sciences"},
                                         {"virology", "other"},
                                         {"world_religions", "humanities"}};

constexpr const char* kMmluCategories[] = {"humanities", "other", "social_sciences", "stem"};

TaskSpec mmlu_task(const std::string& subject) {
  TaskSpec t = multiple_choice(
      "mmlu_" + subject, "mmlu", "", "validation", "test",
      "lm_eval/tasks/mmlu/default/_default_template_yaml",
      [subject](const json& d, const std::string& w) { return mmlu(d, w, subject); }, {"acc"});
  t.subject = subject;
  t.fewshot_split = "dev";
  t.first_n = true;
  return t;
}

std::vector<TaskSpec> builtin_tasks() {
  std::vector<TaskSpec> out;
  out.push_back(multiple_choice("hellaswag", "hellaswag", "train", "validation", "",
                                "lm_eval/tasks/hellaswag/hellaswag.yaml, utils.py", hellaswag));
  out.push_back(multiple_choice("arc_easy", "arc_easy", "train", "validation", "test",
                                "lm_eval/tasks/arc/arc_easy.yaml", arc));
  out.push_back(multiple_choice("arc_challenge", "arc_challenge", "train", "validation", "test",
                                "lm_eval/tasks/arc/arc_challenge.yaml", arc));
  out.push_back(multiple_choice("piqa", "piqa", "train", "validation", "",
                                "lm_eval/tasks/piqa/piqa.yaml", piqa));
  out.push_back(multiple_choice("winogrande", "winogrande", "train", "validation", "",
                                "lm_eval/tasks/winogrande/default.yaml, preprocess_winogrande.py",
                                winogrande, {"acc"}));
  out.push_back(multiple_choice("sciq", "sciq", "train", "validation", "test",
                                "lm_eval/tasks/sciq/sciq.yaml", sciq));
  out.push_back(multiple_choice("pubmedqa", "pubmedqa", "train", "validation", "test",
                                "lm_eval/tasks/pubmedqa/pubmedqa.yaml, preprocess_pubmedqa.py",
                                pubmedqa, {"acc"}));
  TaskSpec lam =
      multiple_choice("lambada_openai", "lambada_openai", "", "", "test",
                      "lm_eval/tasks/lambada/lambada_openai.yaml", lambada, {"perplexity", "acc"});
  lam.output = OutputType::kLoglikelihood;
  out.push_back(lam);
  TaskSpec wiki =
      multiple_choice("wikitext", "wikitext", "train", "validation", "test",
                      "lm_eval/tasks/wikitext/wikitext.yaml, preprocess_wikitext.py", wikitext,
                      {"word_perplexity", "byte_perplexity", "bits_per_byte"});
  wiki.output = OutputType::kLoglikelihoodRolling;
  wiki.version = 2.0;
  out.push_back(wiki);
  for (const MmluSubject& s : kMmluSubjects) out.push_back(mmlu_task(s.name));
  return out;
}

std::vector<TaskGroup> builtin_groups() {
  std::vector<TaskGroup> groups;
  TaskGroup all{"mmlu", {}};
  for (const char* category : kMmluCategories) {
    TaskGroup g{std::string("mmlu_") + category, {}};
    for (const MmluSubject& s : kMmluSubjects) {
      if (std::string(s.category) == category) g.members.push_back(std::string("mmlu_") + s.name);
    }
    all.members.push_back(g.name);
    groups.push_back(g);
  }
  groups.insert(groups.begin(), all);
  return groups;
}

}  // namespace

std::vector<std::string> builtin_task_names() {
  std::vector<std::string> names;
  for (const TaskGroup& g : builtin_groups()) names.push_back(g.name);
  for (const TaskSpec& t : builtin_tasks()) names.push_back(t.name);
  return names;
}

TaskSet resolve_tasks(const std::vector<std::string>& names, const std::vector<TaskSpec>& custom) {
  std::vector<TaskSpec> known = custom;
  for (TaskSpec& t : builtin_tasks()) known.push_back(std::move(t));
  const std::vector<TaskGroup> groups = builtin_groups();
  TaskSet set;
  std::vector<std::string> added;
  std::function<void(const std::string&)> add = [&](const std::string& name) {
    for (const TaskGroup& g : groups) {
      if (g.name != name) continue;
      if (std::none_of(set.groups.begin(), set.groups.end(),
                       [&](const TaskGroup& h) { return h.name == name; })) {
        set.groups.push_back(g);
      }
      for (const std::string& m : g.members) add(m);
      return;
    }
    for (const TaskSpec& t : known) {
      if (t.name != name) continue;
      if (std::find(added.begin(), added.end(), name) == added.end()) {
        added.push_back(name);
        set.tasks.push_back(t);
      }
      return;
    }
    std::vector<std::string> candidates = builtin_task_names();
    for (const TaskSpec& t : custom) candidates.push_back(t.name);
    const std::string near = closest_match(name, candidates);
    throw Error(fmt::format("unknown task \"{}\"{}", name,
                            near.empty() ? "" : fmt::format(" (did you mean \"{}\"?)", near)),
                "--tasks");
  };
  for (const std::string& n : names) add(n);
  return set;
}

std::vector<Doc> read_json_lines(const std::filesystem::path& path) {
  std::unique_ptr<ByteSource> src = ByteSource::open(path);
  std::string buf;
  while (src->read(buf, 1 << 20)) {
  }
  std::vector<Doc> docs;
  std::size_t pos = utf8_bom_length(buf);
  std::size_t line_no = 0;
  while (pos < buf.size()) {
    std::size_t end = buf.find('\n', pos);
    if (end == std::string::npos) end = buf.size();
    ++line_no;
    const std::string_view line = trim(std::string_view(buf).substr(pos, end - pos));
    pos = end + 1;
    if (line.empty()) continue;
    const std::string where = fmt::format("{}:{}", path.string(), line_no);
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      throw Error("not a JSON object (the file must be JSON Lines: one record per line)", where);
    }
    docs.push_back({std::move(j), where});
  }
  return docs;
}

DocLoader::DocLoader(std::filesystem::path data_dir) : data_dir_(std::move(data_dir)) {}
DocLoader::~DocLoader() = default;

const std::vector<Doc>& DocLoader::load(const TaskSpec& task, const std::string& split) {
  const std::string key = task.name + "/" + split;
  if (auto it = subsets_.find(key); it != subsets_.end()) return it->second;

  std::vector<std::filesystem::path> candidates;
  if (auto it = task.split_files.find(split); it != task.split_files.end()) {
    candidates.push_back(it->second);
  } else {
    std::vector<std::filesystem::path> dirs;
    if (!task.subject.empty()) dirs.push_back(data_dir_ / task.dataset / task.subject);
    dirs.push_back(data_dir_ / task.dataset);
    for (const auto& dir : dirs) {
      for (const char* ext : {".jsonl", ".json", ".ndjson", ".jsonl.gz", ".jsonl.zst"}) {
        candidates.push_back(dir / (split + ext));
      }
    }
  }
  for (const auto& path : candidates) {
    if (!std::filesystem::exists(path)) continue;
    auto& file = files_[path.string()];
    if (!file) file = std::make_shared<std::vector<Doc>>(read_json_lines(path));
    std::vector<Doc> docs;
    // A file holding every MMLU subject is filtered by its "subject" field;
    // a subject's own folder is taken whole.
    const bool filter = !task.subject.empty() && path.parent_path().filename() != task.subject;
    for (const Doc& d : *file) {
      if (filter && doc_string(d.fields, "subject", d.where) != task.subject) continue;
      docs.push_back(d);
    }
    return subsets_[key] = std::move(docs);
  }
  std::string looked;
  for (std::size_t i = 0; i < candidates.size() && i < 3; ++i) {
    looked += (i ? ", " : "") + candidates[i].string();
  }
  throw Error(fmt::format("no {} split for task {} (looked for {}{})", split, task.name, looked,
                          candidates.size() > 3 ? ", ..." : ""),
              "--data-dir");
}

}  // namespace borealis
