// Writes a checkpoint directory of a model preset with random weights, as the
// trainer writes it (model.safetensors with the config in its metadata, and
// tokenizer.json), for timing the converters on real sizes (docs/interop.md):
//
//   random_checkpoint gpt2-124m data/tokenizers/gpt2.json /tmp/g124
#include <cstdio>
#include <exception>
#include <filesystem>
#include <vector>

#include "core/atomic_file.h"
#include "model/checkpoint_load.h"
#include "model/config.h"
#include "model/params.h"
#include "model/safetensors.h"
#include "tokenizer/hf_json.h"
#include "tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  using namespace borealis;
  if (argc != 4) {
    std::fprintf(stderr, "usage: random_checkpoint MODEL_PRESET TOKENIZER OUT_DIR\n");
    return 2;
  }
  try {
    const ModelConfig c = model_preset(argv[1]);
    const Tokenizer tok = Tokenizer::load(argv[2]);
    const std::filesystem::path dir = argv[3];
    const ParamLayout layout(c);
    std::vector<float> params(static_cast<std::size_t>(layout.total()));
    init_params(c, layout, params.data(), 1234);
    std::filesystem::create_directories(dir);
    write_file_atomic(dir / "tokenizer.json", hf_tokenizer_json(tok));
    const FileDigest d = save_safetensors(dir / "model.safetensors", layout, params.data(),
                                          {{kModelConfigKey, model_config_to_json(c)}});
    std::printf("%s: %s, %llu bytes\n", dir.c_str(), argv[1],
                static_cast<unsigned long long>(d.bytes));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
