#include "tiny_checkpoint.h"

#include <map>

#include "kernels/backend.h"
#include "model/checkpoint_load.h"
#include "model/safetensors.h"
#include "test_util.h"
#include "tokenizer/hf_json.h"
#include "tokenizer/train.h"

namespace borealis::test {

const std::vector<std::string> kTinyCorpus = {
    "The aurora borealis lights the northern sky in green and violet.",
    "Scientists train language models on papers about the northern lights.",
    "The sky was clear, and the lights danced above the frozen lake.",
    "Caf\xC3\xA9 au lait, na\xC3\xAFve r\xC3\xA9sum\xC3\xA9: bytes of more than one kind.",
};

Tokenizer tiny_tokenizer() {
  BpeTrainOptions o;
  o.vocab_size = 300;
  o.min_frequency = 1;
  o.progress = false;
  return train_bpe_documents(kTinyCorpus, o);
}

ModelConfig tiny_config(std::size_t vocab, const std::string& preset) {
  ModelConfig c = model_preset(preset);
  c.vocab_size = static_cast<int>(vocab);
  c.padded_vocab = pad_vocab(c.vocab_size);
  return c;
}

void write_checkpoint(const std::filesystem::path& dir, const Tokenizer& tok, std::uint64_t seed,
                      bool with_metadata, const std::function<void(Model<float>&)>& edit,
                      const std::string& preset) {
  std::filesystem::create_directories(dir);
  const ModelConfig config = tiny_config(tok.vocab_size(), preset);
  auto backend = make_cpu_backend<float>();
  Model<float> model(config, *backend);
  model.init(seed);
  if (edit) edit(model);
  std::map<std::string, std::string> metadata;
  if (with_metadata) metadata[kModelConfigKey] = model_config_to_json(config);
  save_safetensors(dir / "model.safetensors", model.layout(), model.params(), metadata);
  write_file(dir / "tokenizer.json", hf_tokenizer_json(tok));
  write_file(dir / "state.json", "{}");
}

}  // namespace borealis::test
