// Encodes the first N documents of a JSON Lines file with Hugging Face's
// tokenizers.js (npm @huggingface/tokenizers) and a tokenizer.json, writing
// one line of space-separated ids per document. Used by the interop test.
// Usage: node hf-encode.mjs NPM_DIR TOKENIZER_JSON DOCS_JSONL N OUT
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [npmDir, tokenizerPath, docsPath, n, out] = process.argv.slice(2);
const entry = path.join(npmDir, "node_modules/@huggingface/tokenizers/dist/tokenizers.mjs");
const { Tokenizer } = await import(pathToFileURL(entry).href);
const tok = new Tokenizer(JSON.parse(fs.readFileSync(tokenizerPath, "utf8")), {});
const docs = fs
  .readFileSync(docsPath, "utf8")
  .split("\n")
  .filter((l) => l.length > 0)
  .slice(0, Number(n))
  .map((l) => JSON.parse(l).text);
fs.writeFileSync(out, docs.map((d) => tok.encode(d, { add_special_tokens: false }).ids.join(" ")).join("\n") + "\n");
