// Splits the Brown JSON Lines by category: OUT_DIR/<category>.jsonl, one file
// per category (15), for the demo mixture. Usage: node brown-by-category.mjs IN.jsonl OUT_DIR
import fs from "node:fs";
import path from "node:path";

const [input, outDir] = process.argv.slice(2);
const byCategory = new Map();
for (const line of fs.readFileSync(input, "utf8").split("\n")) {
  if (line.length === 0) continue;
  const { category } = JSON.parse(line);
  if (!byCategory.has(category)) byCategory.set(category, []);
  byCategory.get(category).push(line);
}
fs.mkdirSync(outDir, { recursive: true });
for (const [category, lines] of [...byCategory.entries()].sort()) {
  fs.writeFileSync(path.join(outDir, `${category}.jsonl`), lines.join("\n") + "\n");
}
