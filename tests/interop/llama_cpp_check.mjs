// Runs llama.cpp (npm node-llama-cpp 3.21.1, its prebuilt CPU build) on GGUF
// files that `borealis export gguf` wrote, for tests/interop/gguf_test.cpp.
//
// Usage: node llama_cpp_check.mjs JOB.json
// JOB.json: {"module": path of node-llama-cpp's directory, "threads": n,
//            "models": [{"name", "gguf", "sentences": [text], "prompts": [text],
//                        "max_tokens": n}]}
// Prints one JSON object: per model, llama.cpp's token ids of each sentence
// (no BOS, special tokens as text), its greedy continuation of each prompt
// (token ids) and the log-probabilities it gives the first generated
// token's top candidates ([[id, logprob], ...]), plus decode speed.
import fs from "node:fs";
import path from "node:path";
import {pathToFileURL} from "node:url";

const job = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const entry = path.join(job.module, "dist", "index.js");
const {getLlama, LlamaLogLevel} = await import(pathToFileURL(entry).href);

const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const result = {};
for (const m of job.models) {
  const model = await llama.loadModel({modelPath: m.gguf, gpuLayers: 0});
  const r = {tokens: [], continuations: [], logprobs: [], decode_tokens_per_s: []};
  for (const s of m.sentences) r.tokens.push(Array.from(model.tokenize(s, false)));
  for (const p of m.prompts) {
    const context = await model.createContext({contextSize: 256, threads: job.threads});
    const sequence = context.getSequence();
    const prompt = model.tokenize(p, false);
    const out = [];
    let first = null;
    for await (const step of sequence.evaluateWithMetadata(prompt, {probabilities: true},
                                                           {temperature: 0})) {
      if (first === null) {
        // Probabilities of the next token after the prompt, before sampling.
        first = [...step.probabilities.entries()].sort((a, b) => b[1] - a[1]).slice(0, 5)
            .map(([id, p]) => [id, Math.log(p)]);
      }
      out.push(step.token);
      if (out.length >= m.max_tokens) break;
    }
    r.continuations.push(out);
    r.logprobs.push(first);
    // Decode speed without the per-token probability maps (which cost more
    // than the model step on small models): greedy again, plain evaluate.
    await sequence.clearHistory();
    let n = 0;
    let start = 0;
    for await (const token of sequence.evaluate(prompt, {temperature: 0})) {
      if (n++ === 0) start = performance.now();
      if (n >= m.max_tokens) break;
    }
    r.decode_tokens_per_s.push(n > 1 ? (n - 1) / ((performance.now() - start) / 1000) : 0);
    await context.dispose();
  }
  result[m.name] = r;
  await model.dispose();
}
process.stdout.write(JSON.stringify(result) + "\n");
await llama.dispose();
