// The peer: llama.cpp through node-llama-cpp on a GGUF file, measured like engine-bench.mjs in
// its own process: node bench/llama-bench.mjs --gguf FILE --threads 2 [--gpu auto|vulkan|metal|cuda]
// `--gpu`: every layer on that llama.cpp GPU backend (on Linux x64 node-llama-cpp ships Vulkan and
// CUDA builds); on Mesa's lavapipe it needs GGML_VK_VISIBLE_DEVICES=0 (llama.cpp skips CPU-type
// devices otherwise).
import { parseArgs } from 'node:util'
import { getLlama } from 'node-llama-cpp'

const { values: o } = parseArgs({
  options: {
    gguf: { type: 'string' },
    threads: { type: 'string', default: '2' },
    'prefill-tokens': { type: 'string', default: '512' },
    'decode-tokens': { type: 'string', default: '128' },
    iterations: { type: 'string', default: '2' },
    gpu: { type: 'string' },
  },
})
const threads = Number(o.threads)
const prefillTokens = Number(o['prefill-tokens'])
const decodeTokens = Number(o['decode-tokens'])
const ids = (n) => Array.from({ length: n }, (_, i) => 1000 + ((i * 7919) % 100000)) // same as engine-bench

const gpus = ['auto', 'vulkan', 'metal', 'cuda']
if (o.gpu !== undefined && !gpus.includes(o.gpu)) throw new Error(`--gpu ${o.gpu}: allowed: ${gpus.join(', ')}`)
const llama = await getLlama({ gpu: o.gpu ?? false, logLevel: 'error' })
const gpuNames = o.gpu ? await llama.getGpuDeviceNames() : []
if (o.gpu && (!llama.gpu || !gpuNames.length)) throw new Error(`--gpu ${o.gpu}: llama.cpp found no GPU device (lavapipe: set GGML_VK_VISIBLE_DEVICES=0)`)
const t0 = performance.now()
const model = await llama.loadModel({ modelPath: o.gguf, gpuLayers: o.gpu ? 'max' : 0 })
const loadMs = performance.now() - t0
const context = await model.createContext({ contextSize: 1024, threads, batchSize: 512, sequences: 1 })

async function prefill() {
  const seq = context.getSequence()
  const t = performance.now()
  await seq.evaluateWithoutGeneratingNewTokens(ids(prefillTokens))
  const ms = performance.now() - t
  seq.dispose()
  return (prefillTokens * 1000) / ms
}

async function decode() {
  const seq = context.getSequence()
  await seq.evaluateWithoutGeneratingNewTokens(ids(32))
  let n = 0
  let t
  // The first sampled token comes from the prompt's logits; time the decode steps after it,
  // as engine-bench does.
  for await (const _ of seq.evaluate([ids(33)[32]], { temperature: 0 })) {
    if (n === 0) t = performance.now()
    if (++n >= decodeTokens) break
  }
  const ms = performance.now() - t
  seq.dispose()
  return ((decodeTokens - 1) * 1000) / ms
}

const avg = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length
await prefill() // warm-up
await decode()
const p = []
const d = []
for (let i = 0; i < Number(o.iterations); i++) {
  p.push(await prefill())
  d.push(await decode())
}
console.log(
  JSON.stringify({
    engine: 'node-llama-cpp',
    gguf: o.gguf,
    threads,
    device: o.gpu ? `${llama.gpu}: ${gpuNames.join(', ')}` : 'cpu',
    loadMs,
    prefillTokens,
    prefillTokensPerSecond: avg(p),
    decodeTokens,
    decodeTokensPerSecond: avg(d),
    peakRssMb: process.resourceUsage().maxRSS / 1024,
  }),
)
await context.dispose()
await model.dispose()
