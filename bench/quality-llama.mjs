// llama.cpp's next-token distributions (through node-llama-cpp) at every position of some prompts,
// written as float32 log-probabilities [positions, vocab] to --out. Used by bench/quality.mjs, in
// its own process: node bench/quality-llama.mjs --gguf FILE --prompts prompts.json --out FILE
import { readFileSync, writeFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { getLlama } from 'node-llama-cpp'

const { values: o } = parseArgs({ options: { gguf: { type: 'string' }, prompts: { type: 'string' }, out: { type: 'string' }, threads: { type: 'string', default: '2' } } })
const prompts = JSON.parse(readFileSync(o.prompts, 'utf8'))
const llama = await getLlama({ gpu: false, logLevel: 'error' })
const t0 = performance.now()
const model = await llama.loadModel({ modelPath: o.gguf, gpuLayers: 0 })
const loadMs = performance.now() - t0
const vocab = Number(process.env.QUALITY_VOCAB ?? model.fileInfo.tensorInfo.find((t) => t.name === 'token_embd.weight').dimensions[1])
const context = await model.createContext({ contextSize: 1024, threads: Number(o.threads), batchSize: 512, sequences: 1 })
const positions = prompts.reduce((s, p) => s + p.length, 0)
const out = new Float32Array(positions * vocab).fill(Math.log(1e-30))
let row = 0
const seq = context.getSequence()
for (const ids of prompts) {
  await seq.clearHistory()
  // Temperature 1 and no top-k/top-p/min-p: the model's own softmax over the whole vocabulary.
  const next = { probabilities: true, options: { temperature: 1, topK: 0, topP: 1, minP: 0 } }
  const res = await seq.controlledEvaluate(ids.map((t) => [t, { generateNext: next }]))
  for (let i = 0; i < ids.length; i++) {
    for (const [tok, p] of res[i].next.probabilities) if (p > 0) out[(row + i) * vocab + tok] = Math.log(p)
  }
  row += ids.length
}
seq.dispose()
writeFileSync(o.out, Buffer.from(out.buffer))
console.log(JSON.stringify({ vocab, positions, loadMs }))
await context.dispose()
await model.dispose()
