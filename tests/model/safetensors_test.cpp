// safetensors round trip, the byte layout the format prescribes, and clear
// errors for files that do not fit the model.
#include "model/safetensors.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "test_util.h"

namespace borealis {
namespace {

std::vector<float> numbered(std::int64_t n) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = 0.001f * i - 3.0f;
  return v;
}

TEST(Safetensors, RoundTripAndLayout) {
  test::TempDir dir;
  const ParamLayout layout(model_preset("llama-tiny"));
  const auto params = numbered(layout.total());
  save_safetensors(dir / "m.safetensors", layout, params.data(), {{"model", "llama-tiny"}});
  std::vector<float> back(params.size(), 0.0f);
  load_safetensors(dir / "m.safetensors", layout, back.data());
  EXPECT_EQ(back, params);

  // The bytes as the format specifies them.
  const std::string bytes = test::read_file(dir / "m.safetensors");
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + n + params.size() * sizeof(float));
  const auto header = nlohmann::json::parse(bytes.substr(8, n));
  EXPECT_EQ(header["__metadata__"]["model"], "llama-tiny");
  const ParamView& v = layout.find("h.1.mlp.proj.w");
  EXPECT_EQ(header[v.name]["dtype"], "F32");
  EXPECT_EQ(header[v.name]["shape"], nlohmann::json(v.shape));
  const auto begin = header[v.name]["data_offsets"][0].get<std::uint64_t>();
  float first = 0;
  std::memcpy(&first, bytes.data() + 8 + n + begin, sizeof(float));
  EXPECT_EQ(first, params[static_cast<std::size_t>(v.offset)]);
  EXPECT_TRUE(header.contains("lm_head.w"));  // untied in llama-tiny
}

// read_float's range form gives the same elements as the whole read, for
// every stored dtype, transposed or not, in pieces of any size (the import
// converts a block at a time; a piece may start and end inside a row).
TEST(Safetensors, ReadsFloatsInPieces) {
  test::TempDir dir;
  const std::vector<std::int64_t> shape = {37, 53};
  const auto values = numbered(37 * 53);
  const std::vector<NamedTensor> tensors = {{"f32", shape, values.data(), TensorDtype::kF32},
                                            {"f16", shape, values.data(), TensorDtype::kF16},
                                            {"bf16", shape, values.data(), TensorDtype::kBF16}};
  save_safetensors(dir / "t.safetensors", tensors);
  const SafetensorsFile file(dir / "t.safetensors");
  for (const char* name : {"f32", "f16", "bf16"}) {
    for (const bool transposed : {false, true}) {
      std::vector<float> whole(values.size());
      file.read_float(name, shape, whole.data(), transposed);
      if (transposed && std::string(name) == "f32") {
        EXPECT_EQ(whole[1], values[53]);  // (1, 0) of the stored
      }
      for (const std::int64_t piece : {1, 7, 36, 37, 38, 100, 37 * 53}) {
        std::vector<float> pieces(values.size(), -1.0f);
        for (std::int64_t from = 0; from < 37 * 53; from += piece) {
          const std::int64_t count = std::min<std::int64_t>(piece, 37 * 53 - from);
          file.read_float(name, shape, pieces.data() + from, transposed, from, count);
        }
        EXPECT_EQ(pieces, whole) << name << " transposed " << transposed << " piece " << piece;
      }
    }
  }
  std::vector<float> out(10);
  EXPECT_THROW(file.read_float("f32", shape, out.data(), false, 37 * 53 - 5, 10), Error);
  EXPECT_THROW(file.read_float("f32", shape, out.data(), true, -1, 2), Error);
}

// SafetensorsWriter::append: the stored bytes in pieces of any size, across
// tensor boundaries, make the file save_safetensors writes; more bytes than
// the tensors hold, or a commit before they are all given, is a bug caught.
TEST(Safetensors, WriterAppendsPiecesAcrossTensors) {
  test::TempDir dir;
  const auto a = numbered(300), b = numbered(5), c = numbered(64);
  const std::vector<NamedTensor> tensors = {{"a", {20, 15}, a.data()},
                                            {"empty", {0}, nullptr},
                                            {"b", {5}, b.data()},
                                            {"c", {8, 8}, c.data()}};
  save_safetensors(dir / "whole.safetensors", tensors, {{"k", "v"}});
  std::string data;
  for (const auto* v : {&a, &b, &c})
    data.append(reinterpret_cast<const char*>(v->data()), v->size() * 4);
  for (const std::size_t piece :
       {std::size_t{1}, std::size_t{12}, std::size_t{1196}, std::size_t{1300}, data.size()}) {
    SafetensorsWriter writer(dir / "pieces.safetensors", tensors, {{"k", "v"}});
    for (std::size_t at = 0; at < data.size(); at += piece)
      writer.append(data.data() + at, std::min(piece, data.size() - at));
    writer.commit();
    EXPECT_EQ(test::read_file(dir / "pieces.safetensors"),
              test::read_file(dir / "whole.safetensors"))
        << piece;
  }
  {
    SafetensorsWriter writer(dir / "over.safetensors", tensors);
    EXPECT_THROW(writer.append(data.data(), data.size() + 1), std::logic_error);
  }
  {
    SafetensorsWriter writer(dir / "short.safetensors", tensors);
    writer.append(data.data(), data.size() - 4);
    EXPECT_THROW(writer.commit(), std::logic_error);
    EXPECT_THROW(writer.write(c.data()), std::logic_error);  // inside an appended tensor
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "short.safetensors"));
}

TEST(Safetensors, RejectsFilesThatDoNotFit) {
  test::TempDir dir;
  const ParamLayout tiny_llama(model_preset("llama-tiny"));
  const ParamLayout tiny_gpt2(model_preset("gpt2-tiny"));
  const auto params = numbered(tiny_gpt2.total());
  save_safetensors(dir / "g.safetensors", tiny_gpt2, params.data());
  std::vector<float> out(static_cast<std::size_t>(std::max(tiny_llama.total(), tiny_gpt2.total())));
  try {
    load_safetensors(dir / "g.safetensors", tiny_llama, out.data());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("tensor 'h.0.attn.qkv.w' has shape [96, 32], expected [64, 32]"),
              std::string::npos)
        << e.message();
    EXPECT_EQ(e.where(), (dir / "g.safetensors").string());
  }
  // Tied and untied embeddings: a missing and an extra tensor.
  ModelConfig tied = model_preset("llama-tiny");
  tied.tied_embeddings = true;
  const ParamLayout tied_layout(tied);
  save_safetensors(dir / "tied.safetensors", tied_layout, numbered(tied_layout.total()).data());
  save_safetensors(dir / "untied.safetensors", tiny_llama, numbered(tiny_llama.total()).data());
  try {
    load_safetensors(dir / "tied.safetensors", tiny_llama, out.data());
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.message(), "tensor 'lm_head.w' is missing");
  }
  try {
    load_safetensors(dir / "untied.safetensors", tied_layout, out.data());
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.message(), "tensor 'lm_head.w' is not part of this model");
  }
  // A different shape.
  ModelConfig wide = model_preset("gpt2-tiny");
  wide.d_ff = 64;
  std::vector<float> wide_out(static_cast<std::size_t>(ParamLayout(wide).total()));
  try {
    load_safetensors(dir / "g.safetensors", ParamLayout(wide), wide_out.data());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("has shape [128, 32], expected [64, 32]"), std::string::npos)
        << e.message();
  }
  // Truncated data and garbage.
  const std::string good = test::read_file(dir / "g.safetensors");
  test::write_file(dir / "cut.safetensors", good.substr(0, good.size() - 4));
  EXPECT_THROW(load_safetensors(dir / "cut.safetensors", tiny_gpt2, out.data()), Error);
  test::write_file(dir / "junk.safetensors", std::string("\x10\0\0\0\0\0\0\0{not json!!!!!!}", 24));
  EXPECT_THROW(load_safetensors(dir / "junk.safetensors", tiny_gpt2, out.data()), Error);
  test::write_file(dir / "short.safetensors", "abc");
  EXPECT_THROW(load_safetensors(dir / "short.safetensors", tiny_gpt2, out.data()), Error);
  EXPECT_THROW(load_safetensors(dir / "absent.safetensors", tiny_gpt2, out.data()), Error);
}

}  // namespace
}  // namespace borealis
