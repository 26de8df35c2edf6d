// Brown corpus files ("word/tag word/tag ...", one sentence per line,
// paragraphs separated by blank lines) to JSON Lines documents with the tags
// stripped: words joined by single spaces, sentences by "\n", paragraphs by
// "\n\n". Usage: node brown-to-jsonl.mjs CORPUS_DIR OUT.jsonl
import fs from "node:fs";
import path from "node:path";

const [dir, out] = process.argv.slice(2);
const categories = new Map();
for (const line of fs.readFileSync(path.join(dir, "cats.txt"), "utf8").split("\n")) {
  const [id, name] = line.trim().split(/\s+/);
  if (id && name) categories.set(id, name);
}
const lines = [];
for (const id of [...categories.keys()].sort()) {
  const raw = fs.readFileSync(path.join(dir, id), "utf8");
  const paragraphs = [];
  let sentences = [];
  for (const line of raw.split("\n")) {
    const words = line.trim().split(/\s+/).filter((w) => w.length > 0);
    if (words.length === 0) {
      if (sentences.length > 0) paragraphs.push(sentences.join("\n"));
      sentences = [];
      continue;
    }
    sentences.push(words.map((w) => (w.lastIndexOf("/") > 0 ? w.slice(0, w.lastIndexOf("/")) : w)).join(" "));
  }
  if (sentences.length > 0) paragraphs.push(sentences.join("\n"));
  lines.push(JSON.stringify({ text: paragraphs.join("\n\n"), category: categories.get(id), id }));
}
fs.writeFileSync(out, lines.join("\n") + "\n");
