#include "eval/evaluator.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <unordered_map>

#include "core/error.h"
#include "core/hash.h"
#include "core/progress.h"
#include "core/stopwatch.h"
#include "eval/metrics.h"
#include "eval/prompt.h"
#include "eval/pytext.h"

namespace borealis {

using nlohmann::json;

std::pair<std::vector<std::int32_t>, std::vector<std::int32_t>> encode_pair(
    const TextCodec& codec, const std::string& context, const std::string& continuation) {
  if (context.empty()) return {{codec.end_of_text()}, codec.encode(continuation)};
  const std::string ctx = py::rstrip(context);
  const std::string cont = context.substr(ctx.size()) + continuation;
  std::vector<std::int32_t> whole = codec.encode(ctx + cont);
  std::vector<std::int32_t> ctx_enc = codec.encode(ctx);
  std::vector<std::int32_t> cont_enc;
  if (ctx_enc.size() < whole.size())
    cont_enc.assign(whole.begin() + static_cast<std::ptrdiff_t>(ctx_enc.size()), whole.end());
  return {std::move(ctx_enc), std::move(cont_enc)};
}

std::vector<ScoreRequest> rolling_windows(const std::vector<std::int32_t>& tokens,
                                          std::int32_t prefix_token, int max_length) {
  std::vector<ScoreRequest> out;
  if (tokens.empty()) return out;
  const auto L = static_cast<std::size_t>(max_length);
  const std::size_t n = tokens.size();
  // get_rolling_token_windows(context_len = 1) + make_disjoint_window.
  const std::size_t first = std::min(L, n);
  out.push_back({{prefix_token},
                 std::vector<std::int32_t>(tokens.begin(),
                                           tokens.begin() + static_cast<std::ptrdiff_t>(first))});
  std::size_t predicted = first;
  while (predicted < n) {
    const std::size_t pred = std::min(n - predicted, L);
    const std::size_t end = predicted + pred;
    // The window's input is tokens[end - L - 1, end - 1); its first
    // L - pred + 1 tokens are context.
    const std::size_t in0 = end - L - 1;
    ScoreRequest r;
    r.context.assign(tokens.begin() + static_cast<std::ptrdiff_t>(in0),
                     tokens.begin() + static_cast<std::ptrdiff_t>(in0 + L - pred + 1));
    r.continuation.assign(tokens.begin() + static_cast<std::ptrdiff_t>(end - pred),
                          tokens.begin() + static_cast<std::ptrdiff_t>(end));
    out.push_back(std::move(r));
    predicted += pred;
  }
  return out;
}

namespace {

// Scores kept on disk by request, so that a run that stops (a server that
// went away, a killed job) resumes where it was: one JSON line per score,
// appended and flushed as each batch finishes.
class ScoreCache {
 public:
  ScoreCache(const std::filesystem::path& path, std::string model)
      : path_(path), model_(std::move(model)) {
    if (path_.empty()) return;
    std::ifstream in(path_);
    std::string line;
    std::size_t line_no = 0;
    while (std::getline(in, line)) {
      ++line_no;
      json j = json::parse(line, nullptr, false);
      // A line cut short by a crash is skipped: it is computed again.
      if (j.is_discarded() || !j.contains("key")) continue;
      scores_[j["key"].get<std::string>()] =
          Score{j["logprob"].get<double>(), j["is_greedy"].get<bool>()};
    }
    out_ = std::fopen(path_.c_str(), "ab");
    if (out_ == nullptr) throw_errno("cannot open the score cache", path_.string(), errno);
  }
  ~ScoreCache() {
    if (out_ != nullptr) std::fclose(out_);
  }
  ScoreCache(const ScoreCache&) = delete;
  ScoreCache& operator=(const ScoreCache&) = delete;

  std::string key(const ScoreRequest& r) const {
    Hasher h;
    h.add(model_);
    h.add(static_cast<std::uint64_t>(r.context.size()));
    h.update(r.context.data(), r.context.size() * sizeof(std::int32_t));
    h.update(r.continuation.data(), r.continuation.size() * sizeof(std::int32_t));
    return h.digest().hex();
  }
  const Score* find(const std::string& key) const {
    auto it = scores_.find(key);
    return it == scores_.end() ? nullptr : &it->second;
  }
  void add(const std::string& key, const Score& s) {
    scores_[key] = s;
    if (out_ == nullptr) return;
    const std::string line =
        json{{"key", key}, {"logprob", s.logprob}, {"is_greedy", s.is_greedy}}.dump() + "\n";
    if (std::fwrite(line.data(), 1, line.size(), out_) != line.size()) {
      throw_errno("cannot write the score cache", path_.string(), errno);
    }
  }
  void flush() {
    if (out_ != nullptr && std::fflush(out_) != 0)
      throw_errno("cannot write the score cache", path_.string(), errno);
  }
  bool enabled() const { return !path_.empty(); }

 private:
  std::filesystem::path path_;
  std::string model_;
  std::unordered_map<std::string, Score> scores_;
  std::FILE* out_ = nullptr;
};

std::vector<Score> score_all(LanguageModel& model, ScoreCache& cache,
                             const std::vector<ScoreRequest>& requests, Progress& progress) {
  std::vector<Score> out(requests.size());
  std::vector<std::size_t> todo;
  std::vector<std::string> keys(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    if (cache.enabled()) {
      keys[i] = cache.key(requests[i]);
      if (const Score* s = cache.find(keys[i])) {
        out[i] = *s;
        continue;
      }
    }
    todo.push_back(i);
  }
  const std::size_t cached = requests.size() - todo.size();
  progress.update(cached);
  // Batches small enough that a stop loses little, large enough to keep the model busy.
  const std::size_t batch = cache.enabled() ? 512 : todo.size();
  for (std::size_t b = 0; b < todo.size(); b += batch) {
    const std::size_t e = std::min(todo.size(), b + batch);
    std::vector<ScoreRequest> part;
    for (std::size_t k = b; k < e; ++k) part.push_back(requests[todo[k]]);
    const std::vector<Score> got =
        model.score(part, [&](std::size_t done) { progress.update(cached + b + done); });
    for (std::size_t k = b; k < e; ++k) {
      out[todo[k]] = got[k - b];
      if (cache.enabled()) cache.add(keys[todo[k]], got[k - b]);
    }
    cache.flush();
  }
  progress.update(requests.size());
  return out;
}

std::string python_float(double v) {
  return fmt::format("{}", v);
}

bool exact_match(std::string prediction, std::string reference, const ExactMatchOptions& o) {
  if (o.strip) prediction = py::strip(prediction);
  if (o.ignore_case) {
    prediction = py::lower(prediction);
    reference = py::lower(reference);
  }
  if (o.ignore_punctuation) {
    // string.punctuation
    const std::string punct = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
    const auto drop = [&](std::string& s) {
      std::erase_if(s, [&](char c) { return punct.find(c) != std::string::npos; });
    };
    drop(prediction);
    drop(reference);
  }
  return prediction == reference;
}

json task_config(const TaskSpec& t, const EvalOptions& o) {
  json c = {{"task", t.name},
            {"dataset_path", t.dataset},
            {"output_type", output_type_name(t.output)},
            {"test_split", t.eval_split()},
            {"target_delimiter", t.target_delimiter},
            {"fewshot_delimiter", t.fewshot_delimiter},
            {"num_fewshot", o.num_fewshot},
            {"metric_list", json::array()},
            {"prompt_source", t.source},
            {"metadata", {{"version", t.version}}}};
  if (!t.subject.empty()) c["dataset_name"] = t.subject;
  if (o.num_fewshot > 0) {
    c["fewshot_split"] = t.fewshot_source();
    c["fewshot_config"] = {{"sampler", t.first_n ? "first_n" : "default"}};
  }
  for (const std::string& m : t.metrics) {
    c["metric_list"].push_back({{"metric", m}, {"higher_is_better", higher_is_better(m)}});
  }
  if (t.output == OutputType::kGenerateUntil) {
    c["generation_kwargs"] = {
        {"until", t.until}, {"max_gen_toks", t.max_gen_toks}, {"do_sample", false}};
  }
  return c;
}

}  // namespace

EvalResult evaluate(LanguageModel& model, const TextCodec& codec, const TaskSet& tasks,
                    const EvalOptions& options) {
  DocLoader own_loader(options.data_dir);
  DocLoader& loader = options.docs != nullptr ? *options.docs : own_loader;
  ScoreCache cache(options.cache, model.description());
  EvalResult result;
  json& r = result.results;
  r["results"] = json::object();
  std::map<std::string, std::size_t> sizes;  // docs scored per task and group

  for (const TaskSpec& task : tasks.tasks) {
    const auto started = std::chrono::steady_clock::now();
    const std::vector<Doc>& docs = loader.load(task, task.eval_split());
    const std::vector<Doc>* shots =
        options.num_fewshot > 0 ? &loader.load(task, task.fewshot_source()) : nullptr;
    PromptOptions po;
    po.num_fewshot = options.num_fewshot;
    po.seed = options.fewshot_seed;
    po.limit = options.limit;
    const std::vector<DocPrompt> prompts = build_prompts(task, docs, shots, po);

    // The token requests, and for each doc the range of them that is its own.
    std::vector<ScoreRequest> requests;
    std::vector<GenerationTask> generations;
    std::vector<std::pair<std::size_t, std::size_t>> span(prompts.size());
    for (std::size_t d = 0; d < prompts.size(); ++d) {
      const DocPrompt& p = prompts[d];
      const std::size_t first =
          task.output == OutputType::kGenerateUntil ? generations.size() : requests.size();
      switch (task.output) {
        case OutputType::kMultipleChoice:
        case OutputType::kLoglikelihood:
          for (const auto& [ctx, cont] : p.pairs) {
            auto [c, x] = encode_pair(codec, ctx, cont);
            if (x.empty()) {
              throw Error(fmt::format("task {}: the continuation \"{}\" encodes to no tokens",
                                      task.name, cont),
                          p.doc->where);
            }
            requests.push_back({std::move(c), std::move(x)});
          }
          break;
        case OutputType::kLoglikelihoodRolling:
          for (ScoreRequest& w : rolling_windows(codec.encode(p.formatted.target),
                                                 codec.end_of_text(), model.max_length())) {
            requests.push_back(std::move(w));
          }
          break;
        case OutputType::kGenerateUntil: {
          GenerationTask g;
          g.context = codec.encode(p.context);
          if (g.context.empty()) g.context = {codec.end_of_text()};
          g.until = task.until;
          g.max_gen_toks = task.max_gen_toks;
          generations.push_back(std::move(g));
          break;
        }
      }
      span[d] = {first, (task.output == OutputType::kGenerateUntil ? generations.size()
                                                                   : requests.size())};
    }

    Progress progress(
        task.name, task.output == OutputType::kGenerateUntil ? generations.size() : requests.size(),
        "requests", options.progress);
    std::vector<Score> scores;
    std::vector<std::string> texts;
    if (task.output == OutputType::kGenerateUntil) {
      texts = model.generate(generations, [&](std::size_t done) { progress.update(done); });
      // lm-eval cuts at each stop string in turn (a server may not have).
      for (std::size_t i = 0; i < texts.size(); ++i) {
        for (const std::string& stop : generations[i].until) {
          const std::size_t at = stop.empty() ? std::string::npos : texts[i].find(stop);
          if (at != std::string::npos) texts[i].resize(at);
        }
      }
    } else {
      scores = score_all(model, cache, requests, progress);
    }
    progress.finish();

    // Each doc's metrics (lm-eval's process_results).
    TaskScores ts;
    ts.task = &task;
    TaskRun run;
    run.task = task.name;
    for (std::size_t d = 0; d < prompts.size(); ++d) {
      const DocPrompt& p = prompts[d];
      const Formatted& f = p.formatted;
      const auto [b, e] = span[d];
      DocScores ds;
      json resps = json::array();
      switch (task.output) {
        case OutputType::kMultipleChoice: {
          std::vector<double> lls;
          for (std::size_t i = b; i < e; ++i) lls.push_back(scores[i].logprob);
          // acc_norm divides by each choice's length in characters (for a
          // multiple-input task, lm-eval takes the contexts' lengths).
          std::vector<double> lens;
          for (const std::string& c : f.choices) lens.push_back(static_cast<double>(py::length(c)));
          const std::size_t pred = argmax_first(lls);
          std::vector<double> normed(lls.size());
          for (std::size_t i = 0; i < lls.size(); ++i) normed[i] = lls[i] / lens[i];
          const std::size_t pred_norm = argmax_first(normed);
          const auto gold = static_cast<std::size_t>(f.gold);
          ds.values["acc"] = pred == gold ? 1.0 : 0.0;
          ds.values["acc_norm"] = pred_norm == gold ? 1.0 : 0.0;
          for (std::size_t i = b; i < e; ++i) {
            resps.push_back(json::array({json::array(
                {python_float(scores[i].logprob), scores[i].is_greedy ? "True" : "False"})}));
          }
          break;
        }
        case OutputType::kLoglikelihood:
          ds.values["perplexity"] = scores[b].logprob;
          ds.values["acc"] = scores[b].is_greedy ? 1.0 : 0.0;
          resps.push_back(json::array({json::array(
              {python_float(scores[b].logprob), scores[b].is_greedy ? "True" : "False"})}));
          break;
        case OutputType::kLoglikelihoodRolling: {
          double ll = 0;
          for (std::size_t i = b; i < e; ++i) ll += scores[i].logprob;
          const std::size_t words = f.words ? f.words : py::count_words(f.target);
          const std::size_t bytes = f.bytes ? f.bytes : f.target.size();
          ds.weighted["word_perplexity"] = {ll, static_cast<double>(words)};
          ds.weighted["byte_perplexity"] = {ll, static_cast<double>(bytes)};
          ds.weighted["bits_per_byte"] = {ll, static_cast<double>(bytes)};
          resps.push_back(json::array({python_float(ll)}));
          break;
        }
        case OutputType::kGenerateUntil:
          ds.values["exact_match"] = exact_match(texts[b], f.target, task.exact_match) ? 1.0 : 0.0;
          resps.push_back(json::array({texts[b]}));
          break;
      }
      ts.docs.push_back(std::move(ds));
      if (options.log_samples) {
        json s = {{"doc_id", p.doc_id}, {"doc", p.doc->fields}};
        if (task.output == OutputType::kMultipleChoice) {
          s["target"] = f.gold;
        } else {
          s["target"] = f.target;
        }
        json args = json::object();
        if (task.output == OutputType::kGenerateUntil) {
          args["gen_args_0"] = {
              {"arg_0", p.context},
              {"arg_1", {{"until", task.until}, {"max_gen_toks", task.max_gen_toks}}}};
        } else if (task.output == OutputType::kLoglikelihoodRolling) {
          args["gen_args_0"] = {{"arg_0", f.target}};
        } else {
          for (std::size_t i = 0; i < p.pairs.size(); ++i) {
            args[fmt::format("gen_args_{}", i)] = {{"arg_0", p.pairs[i].first},
                                                   {"arg_1", p.pairs[i].second}};
          }
        }
        s["arguments"] = args;
        s["resps"] = resps;
        json filtered = json::array();
        for (const json& x : resps) filtered.push_back(x[0]);
        s["filtered_resps"] = filtered;
        s["filter"] = "none";
        s["metrics"] = json::array();
        for (const auto& [m, v] : ts.docs.back().values) {
          if (std::find(task.metrics.begin(), task.metrics.end(), m) == task.metrics.end())
            continue;
          s[m] = v;
          s["metrics"].push_back(m);
        }
        for (const auto& [m, v] : ts.docs.back().weighted) {
          s[m] = json::array({v.first, v.second});
          s["metrics"].push_back(m);
        }
        if (!p.fewshot_ids.empty()) s["fewshot_ids"] = p.fewshot_ids;
        run.samples.push_back(std::move(s));
      }
    }
    if (options.contaminated) ts.contaminated = options.contaminated(task, docs, prompts.size());
    json entry = task_metrics(ts, options.bootstrap_iters);
    entry["alias"] = task.name;
    r["results"][task.name] = entry;
    r["configs"][task.name] = task_config(task, options);
    r["versions"][task.name] = task.version;
    r["n-shot"][task.name] = options.num_fewshot;
    r["n-samples"][task.name] = {{"original", docs.size()}, {"effective", prompts.size()}};
    for (const std::string& m : task.metrics)
      r["higher_is_better"][task.name][m] = higher_is_better(m);
    r["task_seconds"][task.name] = seconds_since(started);
    sizes[task.name] = prompts.size();
    result.runs.push_back(std::move(run));
  }
  // Groups, innermost first (lm-eval's aggregate_metric_list, weighted by size).
  for (auto it = tasks.groups.rbegin(); it != tasks.groups.rend(); ++it) {
    const TaskGroup& g = *it;
    std::vector<std::pair<json, std::size_t>> members;
    std::size_t size = 0;
    for (const std::string& m : g.members) {
      if (!r["results"].contains(m)) continue;
      members.emplace_back(r["results"][m], sizes[m]);
      size += sizes[m];
    }
    sizes[g.name] = size;
    json entry = group_metrics(members);
    entry["alias"] = g.name;
    r["results"][g.name] = entry;
    r["groups"][g.name] = entry;
    r["group_subtasks"][g.name] = g.members;
    r["versions"][g.name] = 2;
    r["n-shot"][g.name] = options.num_fewshot;
  }
  return result;
}

std::string results_table(const json& results) {
  std::string out = "| Tasks | Version | n-shot | Metric | | Value | | Stderr |\n";
  out += "|---|---|---|---|---|---|---|---|\n";
  for (const auto& [name, entry] : results["results"].items()) {
    bool first = true;
    for (const auto& [key, value] : entry.items()) {
      const std::size_t comma = key.find(",none");
      if (comma == std::string::npos || key.find("_stderr") != std::string::npos) continue;
      const std::string metric = key.substr(0, comma);
      const std::string se_key = metric + "_stderr,none";
      std::string se = "N/A";
      if (entry.contains(se_key) && entry[se_key].is_number()) {
        se = fmt::format("{:.4f}", entry[se_key].get<double>());
      }
      const bool hib = higher_is_better(metric.substr(0, metric.find("_decontaminate")));
      std::string version, shots;
      if (first && results.contains("versions") && results["versions"].contains(name)) {
        version = results["versions"][name].dump();
      }
      if (first && results.contains("n-shot") && results["n-shot"].contains(name)) {
        shots = results["n-shot"][name].dump();
      }
      out += fmt::format("| {} | {} | {} | {} | {} | {:.4f} | ± | {} |\n", first ? name : "",
                         version, shots, metric, hib ? "↑" : "↓",
                         value.is_number() ? value.get<double>() : std::nan(""), se);
      first = false;
    }
  }
  return out;
}

}  // namespace borealis
