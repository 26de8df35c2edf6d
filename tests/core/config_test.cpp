#include "core/config.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "test_util.h"

namespace borealis {
namespace {

using test::TempDir;
using test::write_file;

ConfigSchema demo_schema() {
  ConfigSchema s;
  s.add("name", std::string("run"), "run name");
  s.add("train.steps", std::int64_t{1000}, "optimizer steps");
  s.add("train.lr", 3e-4, "peak learning rate");
  s.add("train.bf16", false, "bf16 autocast");
  s.add("train.schedule", std::string("cosine"), "LR schedule", {"cosine", "linear", "constant"});
  s.add("data.paths", std::vector<std::string>{}, "dataset prefixes");
  s.add("data.weights", std::vector<double>{1.0}, "blend weights");
  s.add("data.split", std::vector<std::int64_t>{98, 1, 1}, "train/valid/test split");
  s.add("model.attn.heads", std::int64_t{12}, "attention heads");
  return s;
}

TEST(Config, DefaultsWhenNothingIsGiven) {
  const Config c(demo_schema());
  EXPECT_EQ(c.get<std::int64_t>("train.steps"), 1000);
  EXPECT_DOUBLE_EQ(c.get<double>("train.lr"), 3e-4);
  EXPECT_EQ(c.get<std::string>("train.schedule"), "cosine");
  EXPECT_EQ(c.get<std::vector<std::int64_t>>("data.split"), (std::vector<std::int64_t>{98, 1, 1}));
  EXPECT_TRUE(c.is_default("train.steps"));
}

TEST(Config, ParsesAGoodFile) {
  Config c(demo_schema());
  c.merge_toml(R"(
name = "gpt2-small"
[train]
steps = 50
lr = 6e-4
bf16 = true
schedule = "linear"
[data]
paths = ["/d/a", "/d/b"]
weights = [0.3, 1]        # integers are accepted where numbers are expected
split = [90, 5, 5]
[model.attn]
heads = 16
)",
               "run.toml");
  EXPECT_EQ(c.get<std::string>("name"), "gpt2-small");
  EXPECT_EQ(c.get<std::int64_t>("train.steps"), 50);
  EXPECT_DOUBLE_EQ(c.get<double>("train.lr"), 6e-4);
  EXPECT_TRUE(c.get<bool>("train.bf16"));
  EXPECT_EQ(c.get<std::string>("train.schedule"), "linear");
  EXPECT_EQ(c.get<std::vector<std::string>>("data.paths"),
            (std::vector<std::string>{"/d/a", "/d/b"}));
  EXPECT_EQ(c.get<std::vector<double>>("data.weights"), (std::vector<double>{0.3, 1.0}));
  EXPECT_EQ(c.get<std::int64_t>("model.attn.heads"), 16);
  EXPECT_EQ(c.origin("train.steps"), "run.toml:4:9");
  EXPECT_TRUE(c.is_default("model.attn.heads") == false);
}

TEST(Config, DottedKeysAndInlineTablesAreTheSameKeys) {
  Config c(demo_schema());
  c.merge_toml("train.steps = 7\nmodel = { attn = { heads = 2 } }\n", "x.toml");
  EXPECT_EQ(c.get<std::int64_t>("train.steps"), 7);
  EXPECT_EQ(c.get<std::int64_t>("model.attn.heads"), 2);
}

TEST(Config, UnknownKeyNamesKeyFileAndSuggestion) {
  Config c(demo_schema());
  EXPECT_EQ(test::error_line([&] { c.merge_toml("[train]\nsetps = 10\n", "run.toml"); }),
            "error: unknown key 'train.setps'; did you mean 'train.steps'? (run.toml:2:9)");
  // A key in the wrong section is pointed to its section.
  EXPECT_EQ(test::error_line([&] { c.merge_toml("[data]\nlr = 0.1\n", "run.toml"); }),
            "error: unknown key 'data.lr'; did you mean 'train.lr'? (run.toml:2:6)");
  EXPECT_EQ(test::error_line([&] { c.merge_toml("[optimizer]\nx = 1\n", "run.toml"); }),
            "error: unknown key 'optimizer' (run.toml:1:1)");
}

TEST(Config, BadTypesNameKeyExpectedAndActual) {
  Config c(demo_schema());
  EXPECT_EQ(test::error_line([&] { c.merge_toml("[train]\nsteps = \"ten\"\n", "a.toml"); }),
            "error: key 'train.steps' must be an integer, got a string (a.toml:2:9)");
  EXPECT_EQ(
      test::error_line([&] { c.merge_toml("[train]\nsteps = 1.5\n", "a.toml"); }),
      "error: key 'train.steps' must be an integer, got a floating-point number (a.toml:2:9)");
  EXPECT_EQ(test::error_line([&] { c.merge_toml("[train]\nbf16 = 1\n", "a.toml"); }),
            "error: key 'train.bf16' must be a boolean, got an integer (a.toml:2:8)");
  EXPECT_EQ(
      test::error_line([&] { c.merge_toml("[data]\nsplit = [1, \"x\", 3]\n", "a.toml"); }),
      "error: key 'data.split' (element 2) must be a list of integers, got a string (a.toml:2:9)");
  EXPECT_EQ(test::error_line([&] { c.merge_toml("[data]\npaths = \"/one\"\n", "a.toml"); }),
            "error: key 'data.paths' must be a list of strings, got a string (a.toml:2:9)");
  EXPECT_EQ(test::error_line([&] { c.merge_toml("train = 3\n", "a.toml"); }),
            "error: 'train' is a section and must be a table, got an integer (a.toml:1:9)");
  EXPECT_EQ(test::error_line([&] { c.merge_toml("[train]\nschedule = \"step\"\n", "a.toml"); }),
            "error: key 'train.schedule' must be one of cosine, linear, constant, got 'step' "
            "(a.toml:2:12)");
}

TEST(Config, MalformedTomlGivesLineAndColumn) {
  Config c(demo_schema());
  const std::string line =
      test::error_line([&] { c.merge_toml("[train]\nsteps = \n", "bad.toml"); });
  EXPECT_TRUE(line.starts_with("error: invalid TOML: ")) << line;
  EXPECT_TRUE(line.ends_with("(bad.toml:2:9)")) << line;
}

TEST(Config, MissingFileIsAnError) {
  TempDir dir;
  const auto missing = (dir / "nope.toml").string();
  EXPECT_EQ(test::error_line([&] { load_config(demo_schema(), missing, {}); }),
            "error: cannot open file: No such file or directory (" + missing + ")");
}

TEST(Config, OverridesAreTypedByTheKey) {
  TempDir dir;
  write_file(dir / "run.toml", "[train]\nsteps = 50\n");
  const Config c = load_config(
      demo_schema(), dir / "run.toml",
      {"train.steps=10", "train.lr=1e-3", "train.bf16=true", "data.paths=/a/b,/c d",
       "data.split=[80, 10, 10]", "name=my run", "data.weights=[]", "model.attn.heads=1_024"});
  EXPECT_EQ(c.get<std::int64_t>("train.steps"), 10);  // --set wins over the file
  EXPECT_EQ(c.origin("train.steps"), "--set train.steps=10");
  EXPECT_DOUBLE_EQ(c.get<double>("train.lr"), 1e-3);
  EXPECT_TRUE(c.get<bool>("train.bf16"));
  EXPECT_EQ(c.get<std::vector<std::string>>("data.paths"),
            (std::vector<std::string>{"/a/b", "/c d"}));
  EXPECT_EQ(c.get<std::vector<std::int64_t>>("data.split"),
            (std::vector<std::int64_t>{80, 10, 10}));
  EXPECT_EQ(c.get<std::string>("name"), "my run");
  EXPECT_TRUE(c.get<std::vector<double>>("data.weights").empty());
  EXPECT_EQ(c.get<std::int64_t>("model.attn.heads"), 1024);
}

TEST(Config, QuotedOverrideStringsUseTomlEscapes) {
  Config c(demo_schema());
  c.set(R"(name="a=b\tc")");
  EXPECT_EQ(c.get<std::string>("name"), "a=b\tc");
  c.set("name='x'");
  EXPECT_EQ(c.get<std::string>("name"), "x");
}

TEST(Config, LastOverrideWins) {
  const Config c = load_config(demo_schema(), {}, {"train.steps=1", "train.steps=2"});
  EXPECT_EQ(c.get<std::int64_t>("train.steps"), 2);
}

TEST(Config, BadOverridesAreErrors) {
  Config c(demo_schema());
  EXPECT_EQ(test::error_line([&] { c.set("train.steps"); }),
            "error: expected section.key=value (--set train.steps)");
  EXPECT_EQ(test::error_line([&] { c.set("train.step=1"); }),
            "error: unknown key 'train.step'; did you mean 'train.steps'? (--set train.step=1)");
  EXPECT_EQ(test::error_line([&] { c.set("train.steps=ten"); }),
            "error: key 'train.steps' must be an integer, got 'ten' (--set train.steps=ten)");
  EXPECT_EQ(
      test::error_line([&] { c.set("train.steps=99999999999999999999"); }),
      "error: key 'train.steps' must be an integer, got '99999999999999999999' (out of range) "
      "(--set train.steps=99999999999999999999)");
  EXPECT_EQ(test::error_line([&] { c.set("train.bf16=yes"); }),
            "error: key 'train.bf16' must be a boolean, got 'yes' (--set train.bf16=yes)");
  EXPECT_EQ(test::error_line([&] { c.set("data.split=1,x"); }),
            "error: key 'data.split' (element 2) must be a list of integers, got 'x' (--set "
            "data.split=1,x)");
  EXPECT_EQ(test::error_line([&] { c.set("train=1"); }),
            "error: 'train' is a section; set one of its keys (--set train=1)");
  EXPECT_EQ(test::error_line([&] { c.set("train.schedule=cosin"); }),
            "error: key 'train.schedule' must be one of cosine, linear, constant, got 'cosin' "
            "(--set train.schedule=cosin)");
  // The failed overrides changed nothing.
  EXPECT_EQ(c.get<std::int64_t>("train.steps"), 1000);
}

TEST(Config, ResolvedTomlRoundTrips) {
  Config c(demo_schema());
  c.set("name=quote\" back\\slash");
  c.set("train.lr=0.1");
  c.set("data.paths=a,b");
  c.set("data.weights=1,2.5");
  const std::string text = c.to_toml();
  EXPECT_TRUE(text.starts_with("name = ")) << text;  // top-level keys before any table
  Config d(demo_schema());
  d.merge_toml(text, "resolved.toml");
  EXPECT_EQ(d.to_toml(), text);
  EXPECT_EQ(d.get<std::string>("name"), "quote\" back\\slash");
  EXPECT_DOUBLE_EQ(d.get<double>("train.lr"), 0.1);
}

TEST(Config, ReadingWithTheWrongTypeIsAProgrammingError) {
  const Config c(demo_schema());
  EXPECT_THROW(c.get<double>("train.steps"), std::logic_error);
  EXPECT_THROW(c.get<std::int64_t>("train.nope"), std::logic_error);
}

TEST(ConfigSchema, RejectsDuplicateAndMalformedKeys) {
  ConfigSchema s;
  s.add("a.b", std::int64_t{1}, "");
  EXPECT_THROW(s.add("a.b", std::int64_t{2}, ""), std::logic_error);
  EXPECT_THROW(s.add("a", std::int64_t{2}, ""), std::logic_error);      // already a section
  EXPECT_THROW(s.add("a.b.c", std::int64_t{2}, ""), std::logic_error);  // a.b is a key
  EXPECT_THROW(s.add("x..y", std::int64_t{2}, ""), std::logic_error);
  EXPECT_THROW(s.add("x y", std::int64_t{2}, ""), std::logic_error);
  EXPECT_THROW(s.add("c", std::int64_t{2}, "", {"a"}), std::logic_error);
}

}  // namespace
}  // namespace borealis
