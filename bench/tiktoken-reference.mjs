// Reference encoders for bench/tokenizer_bench and the whole-file comparison
// in docs/tokenizer.md: tiktoken's native Rust build (npm
// @anysphere/tiktoken-node 0.2.1, a Node-API binding of tiktoken's Rust core,
// cl100k_base) and its WASM build (npm tiktoken 1.0.22, gpt2 and
// cl100k_base), both without special tokens. tiktoken keeps no cache of
// encoded pieces, so warming up (one pass over the first 50 documents, or
// one whole encode of FILE) only warms the JIT, the allocator and the CPU
// caches; each timed pass encodes the text once.
// Prints one JSON line per measurement:
//   {"impl": ..., "encoding": ..., "bytes": N, "tokens": N, "seconds": S}
// Usage (from the repository root):
//   node bench/tiktoken-reference.mjs            every Brown document, one call each
//   node bench/tiktoken-reference.mjs FILE       FILE as one string, one call (best of 3)
// The packages are looked up in data/npm, then in NODE_PATH.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const require = createRequire(path.resolve("data/npm/package.json"));
const file = process.argv[2];
const docs = file
  ? [fs.readFileSync(file, "utf8")]
  : fs
      .readFileSync("data/brown/brown.jsonl", "utf8")
      .split("\n")
      .filter((l) => l.length > 0)
      .map((l) => JSON.parse(l).text);
const bytes = docs.reduce((n, d) => n + Buffer.byteLength(d, "utf8"), 0);

async function measure(impl, encoding, encodeDoc) {
  for (const d of docs.slice(0, 50)) await encodeDoc(d);  // warm-up
  let best = Infinity;
  let tokens = 0;
  for (let r = 0; r < (file ? 3 : 1); ++r) {
    tokens = 0;
    const start = process.hrtime.bigint();
    for (const d of docs) tokens += (await encodeDoc(d)).length;
    best = Math.min(best, Number(process.hrtime.bigint() - start) / 1e9);
  }
  console.log(JSON.stringify({ impl, encoding, bytes, tokens, seconds: best }));
}

try {
  const native = require("@anysphere/tiktoken-node");
  const tok = native.getTokenizer();
  await measure("tiktoken-native", "cl100k_base", (d) => tok.encodeCl100KNoSpecialTokens(d));
} catch (e) {
  console.error(`tiktoken-native unavailable: ${e.message}`);
}
try {
  const { get_encoding } = require("tiktoken");
  for (const name of file ? ["cl100k_base"] : ["gpt2", "cl100k_base"]) {
    const enc = get_encoding(name);
    await measure("tiktoken-wasm", name, (d) => enc.encode_ordinary(d));
    enc.free();
  }
} catch (e) {
  console.error(`tiktoken-wasm unavailable: ${e.message}`);
}
