// borealis export hf|gguf and borealis import hf: models to and from Hugging
// Face directories and llama.cpp's GGUF (the work is in src/interop/).
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/commands.h"
#include "core/text.h"
#include "interop/gguf.h"
#include "interop/hf_checkpoint.h"

namespace borealis::cli {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// The fields every --json report of these commands has.
nlohmann::json model_json(const ModelConfig& c, const std::string& out, double seconds) {
  return {{"model", c.name},
          {"family", std::string(family_name(c.family))},
          {"n_layer", c.n_layer},
          {"d_model", c.d_model},
          {"vocab_size", c.vocab_size},
          {"out", out},
          {"seconds", seconds}};
}

struct ExportHfArgs {
  bool json = false;
  std::string checkpoint, out;
  std::string dtype = "float32";
  std::string shard_size = "5GB";
};

const std::map<std::string, TensorDtype> kDtypes = {{"float32", TensorDtype::kF32},
                                                    {"bfloat16", TensorDtype::kBF16},
                                                    {"float16", TensorDtype::kF16}};

void run_export_hf(const ExportHfArgs& a) {
  const Clock::time_point t0 = Clock::now();
  HfExportOptions o;
  o.dtype = kDtypes.at(a.dtype);
  o.shard_bytes = parse_bytes(a.shard_size, "--shard-size");
  const ModelWeights model = open_any_model(a.checkpoint);
  const HfExportReport r = export_hf(model, model.dir() / "tokenizer.json", a.out, o);
  if (a.json) {
    nlohmann::json j = model_json(model.config(), a.out, seconds_since(t0));
    j.update({{"dtype", a.dtype},
              {"tensors", r.tensors},
              {"tensor_bytes", r.tensor_bytes},
              {"shards", r.shards}});
    std::cout << j.dump(2) << std::endl;
    return;
  }
  std::printf("exported %s (%s, %d tensors, %s %s) to %s: %d safetensors file%s, %.2f s\n",
              model.config().name.c_str(), std::string(family_name(model.config().family)).c_str(),
              r.tensors, format_bytes(r.tensor_bytes).c_str(), a.dtype.c_str(), a.out.c_str(),
              r.shards, r.shards == 1 ? "" : "s", seconds_since(t0));
}

struct ExportGgufArgs {
  bool json = false;
  std::string checkpoint, out;
  std::string type = "f32";
};

void run_export_gguf(const ExportGgufArgs& a) {
  const Clock::time_point t0 = Clock::now();
  const std::map<std::string, GgufType> types = {
      {"f32", GgufType::kF32}, {"f16", GgufType::kF16}, {"q8_0", GgufType::kQ8_0}};
  const ModelWeights model = open_any_model(a.checkpoint);
  const GgufReport r = export_gguf(model, model.dir() / "tokenizer.json", a.out, types.at(a.type));
  if (a.json) {
    nlohmann::json j = model_json(model.config(), a.out, seconds_since(t0));
    j.update({{"type", a.type},
              {"tensors", r.tensors},
              {"metadata_keys", r.metadata},
              {"bytes", r.bytes}});
    std::cout << j.dump(2) << std::endl;
    return;
  }
  std::printf("exported %s (%s, %d tensors, %d metadata keys, %s) to %s: %s, %.2f s\n",
              model.config().name.c_str(), std::string(family_name(model.config().family)).c_str(),
              r.tensors, r.metadata, a.type.c_str(), a.out.c_str(), format_bytes(r.bytes).c_str(),
              seconds_since(t0));
}

struct ImportHfArgs {
  bool json = false;
  std::string hf_dir, checkpoint;
};

void run_import_hf(const ImportHfArgs& a) {
  const Clock::time_point t0 = Clock::now();
  const HfImportReport r = import_hf(a.hf_dir, a.checkpoint);
  const ModelConfig& c = r.config;
  if (a.json) {
    nlohmann::json j = model_json(c, a.checkpoint, seconds_since(t0));
    j.update({{"tokenizer", r.tokenizer}});
    std::cout << j.dump(2) << std::endl;
    return;
  }
  std::printf("imported %s (%s, %d layers, d_model %d, vocabulary %d) to %s%s, %.2f s\n",
              c.name.c_str(), std::string(family_name(c.family)).c_str(), c.n_layer, c.d_model,
              c.vocab_size, a.checkpoint.c_str(),
              r.tokenizer ? " with its tokenizer.json" : " (no tokenizer.json: pass --tokenizer)",
              seconds_since(t0));
}

}  // namespace

Command add_export(CLI::App& parent) {
  CLI::App* app = parent.add_subcommand(
      "export", "Export a checkpoint for other tools: a Hugging Face directory or a GGUF file");
  app->require_subcommand(1, 1);
  auto hf = std::make_shared<ExportHfArgs>();
  CLI::App* hf_app = app->add_subcommand(
      "hf",
      "Write a Hugging Face directory (safetensors, config.json, tokenizer) for "
      "transformers: GPT2LMHeadModel or LlamaForCausalLM");
  hf_app
      ->add_option("CKPT", hf->checkpoint,
                   "Checkpoint directory, run directory (newest checkpoint) or Hugging Face "
                   "directory")
      ->required();
  hf_app->add_option("OUT_DIR", hf->out, "Directory to write (created if needed)")->required();
  hf_app->add_option("--dtype", hf->dtype, "Tensor type of the weights")
      ->check(CLI::IsMember({"float32", "bfloat16", "float16"}))
      ->capture_default_str();
  hf_app
      ->add_option("--shard-size", hf->shard_size,
                   "Largest safetensors file; bigger models are split into shards with "
                   "model.safetensors.index.json (e.g. 500MB, 2GiB)")
      ->capture_default_str();
  hf_app->add_flag("--json", hf->json, "Print the report as one JSON object");
  hf_app->footer(
      "Examples:\n"
      "  borealis export hf runs/brown hf/brown-llama\n"
      "  borealis export hf runs/gpt2 hf/gpt2 --dtype bfloat16 --shard-size 2GB");
  auto gguf = std::make_shared<ExportGgufArgs>();
  CLI::App* gguf_app = app->add_subcommand(
      "gguf", "Write a GGUF v3 file for llama.cpp (weights, hyperparameters and tokenizer)");
  gguf_app
      ->add_option("CKPT", gguf->checkpoint,
                   "Checkpoint directory, run directory (newest checkpoint) or Hugging Face "
                   "directory")
      ->required();
  gguf_app->add_option("OUT", gguf->out, "GGUF file to write")->required();
  gguf_app
      ->add_option("--type", gguf->type,
                   "Weight matrices as f32, f16 or q8_0 (8-bit blocks); norms and biases "
                   "stay f32")
      ->check(CLI::IsMember({"f32", "f16", "q8_0"}))
      ->capture_default_str();
  gguf_app->add_flag("--json", gguf->json, "Print the report as one JSON object");
  gguf_app->footer(
      "Example:\n"
      "  borealis export gguf runs/brown brown.gguf --type q8_0 && llama-cli -m brown.gguf");
  return {app, [hf, hf_app, gguf, gguf_app] {
            if (hf_app->parsed()) run_export_hf(*hf);
            if (gguf_app->parsed()) run_export_gguf(*gguf);
          }};
}

Command add_import(CLI::App& parent) {
  CLI::App* app = parent.add_subcommand(
      "import", "Import a model from another tool's format into a Borealis checkpoint");
  app->require_subcommand(1, 1);
  auto hf = std::make_shared<ImportHfArgs>();
  CLI::App* hf_app = app->add_subcommand(
      "hf",
      "Read a Hugging Face directory (GPT-2 or Llama; safetensors in F32, BF16 or F16, "
      "one file or shards) into a checkpoint directory");
  hf_app->add_option("HF_DIR", hf->hf_dir, "Hugging Face model directory")->required();
  hf_app->add_option("CKPT", hf->checkpoint, "Checkpoint directory to write (created if needed)")
      ->required();
  hf_app->add_flag("--json", hf->json, "Print the report as one JSON object");
  hf_app->footer(
      "Commands taking --checkpoint also read a Hugging Face directory directly.\n\n"
      "Example:\n"
      "  borealis import hf ~/models/gpt2 ckpt/gpt2 && borealis generate --checkpoint "
      "ckpt/gpt2 --prompt 'Hello'");
  return {app, [hf, hf_app] {
            if (hf_app->parsed()) run_import_hf(*hf);
          }};
}

}  // namespace borealis::cli
