// Reference encoders for bench/tokenizer_bench: tiktoken's native Rust build
// (npm @anysphere/tiktoken-node, cl100k_base) and its WASM build (npm
// tiktoken, gpt2 and cl100k_base), encoding every Brown document once after
// a warm-up pass. Prints one JSON line per measurement:
//   {"impl": ..., "encoding": ..., "bytes": N, "tokens": N, "seconds": S}
// Usage (from the repository root): node bench/tiktoken-reference.mjs
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const require = createRequire(path.resolve("data/npm/package.json"));
const docs = fs
  .readFileSync("data/brown/brown.jsonl", "utf8")
  .split("\n")
  .filter((l) => l.length > 0)
  .map((l) => JSON.parse(l).text);
const bytes = docs.reduce((n, d) => n + Buffer.byteLength(d, "utf8"), 0);

async function measure(impl, encoding, encodeDoc) {
  for (const d of docs.slice(0, 50)) await encodeDoc(d);  // warm-up
  let tokens = 0;
  const start = process.hrtime.bigint();
  for (const d of docs) tokens += (await encodeDoc(d)).length;
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  console.log(JSON.stringify({ impl, encoding, bytes, tokens, seconds }));
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
  for (const name of ["gpt2", "cl100k_base"]) {
    const enc = get_encoding(name);
    await measure("tiktoken-wasm", name, (d) => enc.encode_ordinary(d));
    enc.free();
  }
} catch (e) {
  console.error(`tiktoken-wasm unavailable: ${e.message}`);
}
