// The prompts of each built-in task, for fixture records in the data set's
// own schema. Every expected string is written out here by hand from
// lm-evaluation-harness's templates (the task's yaml and utils.py named in
// each test), not produced by the code under test; few-shot draws are the
// indices Python's random.Random(1234).sample gives (noted beside each).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "eval/custom_task.h"
#include "eval/prompt.h"
#include "eval/task.h"
#include "test_util.h"

namespace borealis {
namespace {

using nlohmann::json;
using Pairs = std::vector<std::pair<std::string, std::string>>;

void write_jsonl(const std::filesystem::path& path, const std::vector<json>& records) {
  std::filesystem::create_directories(path.parent_path());
  std::string text;
  for (const json& r : records) text += r.dump() + "\n";
  test::write_file(path, text);
}

TaskSpec task_named(const std::string& name) {
  TaskSet set = resolve_tasks({name}, {});
  EXPECT_EQ(set.tasks.size(), 1u);
  return set.tasks.at(0);
}

std::vector<DocPrompt> prompts_for(const std::filesystem::path& dir, const std::string& name,
                                   int shots = 0) {
  static std::vector<std::unique_ptr<DocLoader>> keep;
  keep.push_back(std::make_unique<DocLoader>(dir));
  const TaskSpec task = task_named(name);
  const auto& docs = keep.back()->load(task, task.eval_split());
  const std::vector<Doc>* fs =
      shots > 0 ? &keep.back()->load(task, task.fewshot_source()) : nullptr;
  PromptOptions o;
  o.num_fewshot = shots;
  return build_prompts(task, docs, fs, o);
}

json arc_record(const std::string& q, const std::vector<std::string>& answers,
                const std::string& key) {
  json labels = json::array();
  for (std::size_t i = 0; i < answers.size(); ++i)
    labels.push_back(std::string(1, static_cast<char>('A' + i)));
  return {{"id", "Mercury_" + q.substr(0, 3)},
          {"question", q},
          {"choices", {{"text", answers}, {"label", labels}}},
          {"answerKey", key}};
}

// lm_eval/tasks/arc/arc_easy.yaml: "Question: {{question}}\nAnswer:", choices
// after a " ", gold = choices.label.index(answerKey).
TEST(EvalPrompt, ArcZeroShot) {
  test::TempDir dir;
  write_jsonl(
      dir / "arc_easy/test.jsonl",
      {arc_record("Which gas do plants take in?", {"oxygen", "carbon dioxide", "helium"}, "B")});
  const auto p = prompts_for(dir.path(), "arc_easy");
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].pairs,
            (Pairs{{"Question: Which gas do plants take in?\nAnswer:", " oxygen"},
                   {"Question: Which gas do plants take in?\nAnswer:", " carbon dioxide"},
                   {"Question: Which gas do plants take in?\nAnswer:", " helium"}}));
  EXPECT_EQ(p[0].formatted.gold, 1);
}

// Few-shot examples from the train split, drawn by one random.Random(1234)
// for the docs in order: sample(range(5), 2) three times gives [3, 0],
// [0, 4], [4, 0]. Each example is question + " " + answer + "\n\n".
TEST(EvalPrompt, ArcFewShotDrawsAsPythonDoes) {
  test::TempDir dir;
  std::vector<json> train;
  for (int i = 0; i < 5; ++i) {
    train.push_back(
        arc_record("Train question " + std::to_string(i) + "?", {"yes", "no"}, i % 2 ? "B" : "A"));
  }
  write_jsonl(dir / "arc_easy/train.jsonl", train);
  write_jsonl(dir / "arc_easy/test.jsonl",
              {arc_record("T0?", {"a", "b"}, "A"), arc_record("T1?", {"a", "b"}, "A"),
               arc_record("T2?", {"a", "b"}, "A")});
  const auto p = prompts_for(dir.path(), "arc_easy", 2);
  ASSERT_EQ(p.size(), 3u);
  EXPECT_EQ(
      p[0].pairs[0].first,
      "Question: Train question 3?\nAnswer: no\n\nQuestion: Train question 0?\nAnswer: yes\n\n"
      "Question: T0?\nAnswer:");
  EXPECT_EQ(
      p[1].pairs[0].first,
      "Question: Train question 0?\nAnswer: yes\n\nQuestion: Train question 4?\nAnswer: yes\n\n"
      "Question: T1?\nAnswer:");
  EXPECT_EQ(p[2].fewshot_ids, (std::vector<std::size_t>{4, 0}));
  // The same call draws the same examples.
  EXPECT_EQ(prompts_for(dir.path(), "arc_easy", 2)[2].pairs, p[2].pairs);
}

// lm_eval/tasks/hellaswag/utils.py: query = preprocess(activity_label + ": " +
// ctx_a + " " + ctx_b.capitalize()), choices = preprocess(endings); preprocess
// strips, turns " [title]" into ". ", drops [bracketed] text, then "  " -> " ".
// hellaswag has no test split, so lm-eval draws n + 1 examples and drops the
// evaluated doc: sample(range(3), 2) gives [1, 0] then [0, 2]; 1-shot keeps
// the first of each.
TEST(EvalPrompt, HellaswagPreprocessingAndFewShot) {
  test::TempDir dir;
  const auto rec = [](const std::string& label, const std::string& a, const std::string& b,
                      const std::vector<std::string>& endings, const std::string& gold) {
    return json{{"ind", 1},
                {"activity_label", label},
                {"ctx_a", a},
                {"ctx_b", b},
                {"ctx", a + " " + b},
                {"endings", endings},
                {"source_id", "wikihow~1"},
                {"split", "val"},
                {"split_type", "indomain"},
                {"label", gold}};
  };
  write_jsonl(
      dir / "hellaswag/validation.jsonl",
      {rec("Personal Care and Style", "[header] How to dye your hair [title] Choose a color.",
           "PICK a SHADE",
           {"[step] Rinse the dye out.  [substeps] Use cool water.", "it paints the cat."}, "0"),
       rec("Skiing", "A man skis down a hill.", "he", {"falls.", "jumps."}, "1")});
  write_jsonl(dir / "hellaswag/train.jsonl",
              {rec("A", "x.", "y", {"e0.", "e1."}, "0"), rec("B", "p.", "q", {"f0.", "f1."}, "1"),
               rec("C", "r.", "s", {"g0.", "g1."}, "0")});
  const auto p = prompts_for(dir.path(), "hellaswag");
  EXPECT_EQ(p[0].pairs,
            (Pairs{{"Personal Care and Style: How to dye your hair. Choose a color. Pick a shade",
                    "  Rinse the dye out.  Use cool water."},
                   {"Personal Care and Style: How to dye your hair. Choose a color. Pick a shade",
                    " it paints the cat."}}));
  EXPECT_EQ(p[1].formatted.gold, 1);
  const auto s = prompts_for(dir.path(), "hellaswag", 1);
  EXPECT_EQ(s[0].fewshot_ids, (std::vector<std::size_t>{1}));
  EXPECT_EQ(s[1].fewshot_ids, (std::vector<std::size_t>{0}));
  EXPECT_EQ(s[1].pairs[1].first, "A: x. Y e0.\n\nSkiing: A man skis down a hill. He");
  EXPECT_EQ(s[1].pairs[1].second, " jumps.");
}

// lm_eval/tasks/piqa/piqa.yaml.
TEST(EvalPrompt, Piqa) {
  test::TempDir dir;
  write_jsonl(dir / "piqa/validation.jsonl", {{{"goal", "How do I open a jar?"},
                                               {"sol1", "Twist the lid."},
                                               {"sol2", "Eat the lid."},
                                               {"label", 0}}});
  const auto p = prompts_for(dir.path(), "piqa");
  EXPECT_EQ(p[0].pairs, (Pairs{{"Question: How do I open a jar?\nAnswer:", " Twist the lid."},
                               {"Question: How do I open a jar?\nAnswer:", " Eat the lid."}}));
}

// lm_eval/tasks/winogrande/preprocess_winogrande.py: each option fills the
// blank as its own context; the rest of the sentence, stripped, follows " ".
// A few-shot example is the right option's context + " " + the rest.
TEST(EvalPrompt, WinograndePartialScoring) {
  test::TempDir dir;
  const json a = {{"sentence", "The trophy does not fit in the suitcase because _ is too big."},
                  {"option1", "the trophy"},
                  {"option2", "the suitcase"},
                  {"answer", "1"}};
  const json b = {{"sentence", "Sam paid Tom because _ owed money."},
                  {"option1", "Sam"},
                  {"option2", "Tom"},
                  {"answer", "2"}};
  write_jsonl(dir / "winogrande/validation.jsonl", {a});
  write_jsonl(dir / "winogrande/train.jsonl", {b, b});
  const auto p = prompts_for(dir.path(), "winogrande");
  EXPECT_EQ(
      p[0].pairs,
      (Pairs{{"The trophy does not fit in the suitcase because the trophy", " is too big."},
             {"The trophy does not fit in the suitcase because the suitcase", " is too big."}}));
  EXPECT_EQ(p[0].formatted.gold, 0);
  const auto s = prompts_for(dir.path(), "winogrande", 1);
  EXPECT_EQ(s[0].pairs[1].first,
            "Sam paid Tom because Tom owed money.\n\nThe trophy does not fit in the suitcase "
            "because the suitcase");
}

// lm_eval/tasks/lambada/lambada_openai.yaml: the text but its last word, and
// " " + the last word, with no delimiter between them.
TEST(EvalPrompt, Lambada) {
  test::TempDir dir;
  write_jsonl(dir / "lambada_openai/test.jsonl",
              {{{"text", "he reached for the  door and opened the window"}}});
  const auto p = prompts_for(dir.path(), "lambada_openai");
  EXPECT_EQ(p[0].pairs, (Pairs{{"he reached for the  door and opened the", " window"}}));
}

// lm_eval/tasks/sciq/sciq.yaml: "{{support.lstrip()}}\nQuestion: ...\nAnswer:",
// the correct answer last.
TEST(EvalPrompt, Sciq) {
  test::TempDir dir;
  write_jsonl(dir / "sciq/test.jsonl", {{{"question", "What do plants make?"},
                                         {"distractor1", "rocks"},
                                         {"distractor2", "salt"},
                                         {"distractor3", "iron"},
                                         {"correct_answer", "sugar"},
                                         {"support", "\n  Plants use light."}}});
  const auto p = prompts_for(dir.path(), "sciq");
  EXPECT_EQ(p[0].pairs[3],
            (std::pair<std::string, std::string>{
                "Plants use light.\nQuestion: What do plants make?\nAnswer:", " sugar"}));
  EXPECT_EQ(p[0].formatted.gold, 3);
}

// lm_eval/tasks/pubmedqa/preprocess_pubmedqa.py: "Abstract: " + the contexts
// joined by "\n" + "\nQuestion: ...\nAnswer:"; choices yes, no, maybe.
TEST(EvalPrompt, PubmedqaBothSchemas) {
  test::TempDir dir;
  write_jsonl(dir / "pubmedqa/test.jsonl", {{{"QUESTION", "Does X help?"},
                                             {"CONTEXTS", {"First part.", "Second part."}},
                                             {"final_decision", "no"}},
                                            {{"pubid", 1},
                                             {"question", "Is Y safe?"},
                                             {"context", {{"contexts", {"Only part."}}}},
                                             {"final_decision", "maybe"}}});
  const auto p = prompts_for(dir.path(), "pubmedqa");
  EXPECT_EQ(p[0].pairs[1],
            (std::pair<std::string, std::string>{
                "Abstract: First part.\nSecond part.\nQuestion: Does X help?\nAnswer:", " no"}));
  EXPECT_EQ(p[0].formatted.gold, 1);
  EXPECT_EQ(p[1].pairs[2].first, "Abstract: Only part.\nQuestion: Is Y safe?\nAnswer:");
  EXPECT_EQ(p[1].formatted.gold, 2);
}

// lm_eval/tasks/mmlu/default: the description, the dev split's first n as
// examples, "{{question.strip()}}\nA. ..\nB. ..\nC. ..\nD. ..\nAnswer:",
// choices " A" .. " D". One file of every subject is filtered by "subject".
TEST(EvalPrompt, MmluDescriptionAndFirstN) {
  test::TempDir dir;
  const auto rec = [](const std::string& subject, const std::string& q, int answer) {
    return json{{"question", q},
                {"subject", subject},
                {"choices", {"1", "2", "3", "4"}},
                {"answer", answer}};
  };
  write_jsonl(dir / "mmlu/test.jsonl",
              {rec("anatomy", "  What is 1+1? ", 1), rec("virology", "V?", 0)});
  write_jsonl(dir / "mmlu/dev.jsonl",
              {rec("virology", "Dv?", 0), rec("anatomy", "D0?", 2), rec("anatomy", "D1?", 3)});
  const auto p = prompts_for(dir.path(), "mmlu_anatomy", 1);
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].pairs[1],
            (std::pair<std::string, std::string>{
                "The following are multiple choice questions (with answers) about anatomy.\n\n"
                "D0?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: C\n\n"
                "What is 1+1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:",
                " B"}));
  // "mmlu" is the 57 subjects in lm-eval's four categories.
  const TaskSet all = resolve_tasks({"mmlu"}, {});
  EXPECT_EQ(all.tasks.size(), 57u);
  EXPECT_EQ(all.groups.size(), 5u);
}

// lm_eval/tasks/wikitext/preprocess_wikitext.py; words counted on the page
// before detokenizing, as len(re.split(r"\s+", page)).
TEST(EvalPrompt, WikitextDetokenizer) {
  test::TempDir dir;
  write_jsonl(dir / "wikitext/test.jsonl",
              {{{"page", " = Valkyria = \n The game 's 3 @,@ 000 units ( in Japan ) sold . \n"}}});
  DocLoader loader(dir.path());
  const TaskSpec t = task_named("wikitext");
  const auto& docs = loader.load(t, "test");
  const Formatted f = t.format(docs[0].fields, docs[0].where);
  EXPECT_EQ(f.target, " = Valkyria =\nThe game's 3,000 units (in Japan) sold.\n");
  EXPECT_EQ(f.words, 18u);  // 16 words and the empty strings before and after
  EXPECT_EQ(f.bytes, 65u);
}

TEST(EvalPrompt, CustomTaskTemplates) {
  test::TempDir dir;
  write_jsonl(dir / "qa/test.jsonl", {{{"q", "Boiling point of water?"},
                                       {"opts", {"90 C", "100 C"}},
                                       {"ans", "100 C"},
                                       {"meta", {{"topic", "chemistry"}}}}});
  test::write_file(dir / "chem.toml",
                   "name = \"chem\"\ntype = \"multiple_choice\"\ntest = \"qa/test.jsonl\"\n"
                   "description = \"Topic: {meta.topic}\\n\"\ntext = \"Q: {q} {{braces}}\\nA:\"\n"
                   "choices_field = \"opts\"\ngold = \"{ans}\"\n");
  const TaskSpec t = load_custom_task(dir / "chem.toml");
  DocLoader loader(dir.path());
  const auto p = build_prompts(t, loader.load(t, "test"), nullptr, {});
  EXPECT_EQ(p[0].pairs[1],
            (std::pair<std::string, std::string>{
                "Topic: chemistry\nQ: Boiling point of water? {braces}\nA:", " 100 C"}));
  EXPECT_EQ(p[0].formatted.gold, 1);
}

TEST(EvalPrompt, BadInputNamesFileLineAndField) {
  test::TempDir dir;
  write_jsonl(dir / "arc_easy/test.jsonl",
              {arc_record("Q?", {"a", "b"}, "A"), {{"question", "Q2?"}}});
  EXPECT_EQ(test::error_line([&] { prompts_for(dir.path(), "arc_easy"); }),
            "error: missing field \"choices\" (" + (dir / "arc_easy/test.jsonl").string() + ":2)");
  write_jsonl(dir / "arc_easy/test.jsonl", {arc_record("Q?", {"a", "b"}, "C")});
  EXPECT_NE(test::error_line([&] { prompts_for(dir.path(), "arc_easy"); }).find("answerKey \"C\""),
            std::string::npos);
  write_jsonl(dir / "piqa/validation.jsonl",
              {{{"goal", "G"}, {"sol1", "x"}, {"sol2", "y"}, {"label", 2}}});
  EXPECT_NE(test::error_line([&] {
              prompts_for(dir.path(), "piqa");
            }).find("gold answer index 2 is outside"),
            std::string::npos);
  write_jsonl(dir / "piqa/validation.jsonl",
              {{{"goal", "G"}, {"sol1", ""}, {"sol2", "y"}, {"label", 1}}});
  EXPECT_NE(test::error_line([&] { prompts_for(dir.path(), "piqa"); }).find("choice 0 is empty"),
            std::string::npos);
  std::filesystem::create_directories(dir / "sciq");
  test::write_file(dir / "sciq/test.jsonl", "{\"question\": \"q\"}\nnot json\n");
  EXPECT_EQ(test::error_line([&] { prompts_for(dir.path(), "sciq"); }),
            "error: not a JSON object (the file must be JSON Lines: one record per line) (" +
                (dir / "sciq/test.jsonl").string() + ":2)");
  EXPECT_EQ(test::error_line([] { resolve_tasks({"hellaswg"}, {}); }),
            "error: unknown task \"hellaswg\" (did you mean \"hellaswag\"?) (--tasks)");
  EXPECT_NE(
      test::error_line([&] { prompts_for(dir.path(), "winogrande"); }).find("no validation split"),
      std::string::npos);
}

}  // namespace
}  // namespace borealis
