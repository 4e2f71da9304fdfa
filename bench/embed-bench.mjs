// Texts embedded per second, ours or node-llama-cpp's embedding context, one configuration per
// process (run by bench/embed.mjs):
//   node bench/embed-bench.mjs --engine ours  --model DIR  --quantization dynamic_int8 --threads 2
//   node bench/embed-bench.mjs --engine llama --model FILE.gguf --threads 2
// Texts: 128 fixed, varied token ids each (speed depends on the count, not the values). Batch b:
// b texts per call (ours: one embed call, whose texts share engine steps; llama: b getEmbeddingFor
// calls on its one embedding context, as its API serves them). Prints one JSON line.
import { parseArgs } from 'node:util'

const { values: o } = parseArgs({
  options: {
    engine: { type: 'string' },
    model: { type: 'string' },
    quantization: { type: 'string', default: 'none' },
    threads: { type: 'string', default: '2' },
    tokens: { type: 'string', default: '128' },
    batches: { type: 'string', default: '1,32' },
    seconds: { type: 'string', default: '10' },
  },
})
const threads = Number(o.threads)
const tokens = Number(o.tokens)
const text = (k) => Array.from({ length: tokens }, (_, i) => 1000 + ((k * 104729 + i * 7919) % 100000))

let embedBatch
let dims
let close
if (o.engine === 'ours') {
  const { ModelRunner } = await import('../dist/index.mjs')
  // No prefix cache: the same texts are embedded again and again, and llama.cpp's context keeps nothing.
  const runner = await ModelRunner.load({ modelName: o.model, threads, accelerationConfig: { quantization: o.quantization }, onLoadProgress: false, modelKind: 'embedding', enablePrefixCaching: false })
  embedBatch = async (texts) => (await runner.embedWithUsage(texts)).embeddings
  close = () => runner.dispose()
} else {
  const { getLlama } = await import('node-llama-cpp')
  const llama = await getLlama({ gpu: false, logLevel: 'error' })
  const model = await llama.loadModel({ modelPath: o.model, gpuLayers: 0 })
  const ctx = await model.createEmbeddingContext({ contextSize: 512, batchSize: 512, threads })
  embedBatch = async (texts) => {
    const out = []
    for (const t of texts) out.push((await ctx.getEmbeddingFor(t)).vector)
    return out
  }
  close = async () => {
    await ctx.dispose()
    await model.dispose()
  }
}

const results = {}
for (const b of o.batches.split(',').map(Number)) {
  const batch = Array.from({ length: b }, (_, k) => text(k))
  dims = (await embedBatch(batch.slice(0, 1)))[0].length // warm-up
  let texts = 0
  const started = performance.now()
  while (performance.now() - started < Number(o.seconds) * 1000 || texts === 0) {
    texts += (await embedBatch(batch)).length
  }
  results[`batch${b}`] = (texts * 1000) / (performance.now() - started)
}
await close()
console.log(JSON.stringify({ engine: o.engine, quantization: o.quantization, model: o.model, threads, tokens, dims, textsPerSecond: results }))
