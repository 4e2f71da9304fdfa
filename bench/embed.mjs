// Embedding throughput, ours against node-llama-cpp's embedding context on the same weights:
// Qwen3-Embedding-0.6B's shapes (the synthetic Qwen3-0.6B checkpoint: same layers; the vocabulary
// rows do not enter an embedding), 128-token texts, batch 1 and 32, bf16 and dynamic_int8 (Q8_0
// GGUF for llama.cpp), each configuration in its own process, in one run.
//   node bench/embed.mjs [--threads 2] [--seconds 10]
import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { ModelRunner } from '../dist/index.mjs'
import { defaultSyntheticDir, makeSyntheticCheckpoint } from '../scripts/make-synthetic-checkpoint.mjs'

const { values: o } = parseArgs({ options: { threads: { type: 'string', default: '2' }, seconds: { type: 'string', default: '10' } } })
const dir = makeSyntheticCheckpoint(defaultSyntheticDir)
const ggufs = { bf16: join(dir, '..', 'qwen3-0.6b-synthetic-embedding-BF16.gguf'), dynamic_int8: join(dir, '..', 'qwen3-0.6b-synthetic-embedding-Q8_0.gguf') }
for (const [q, file] of Object.entries(ggufs)) {
  if (existsSync(file)) continue
  // As an embedding model, so the file carries pooling_type 3 (last token) for llama.cpp.
  const r = await ModelRunner.load({ modelName: dir, threads: Number(o.threads), accelerationConfig: { quantization: q === 'bf16' ? 'none' : q }, onLoadProgress: false, modelKind: 'embedding' })
  await r.export(file)
  await r.dispose()
}
const run = (args) => JSON.parse(execFileSync(process.execPath, [join(import.meta.dirname, 'embed-bench.mjs'), '--threads', o.threads, '--seconds', o.seconds, ...args], { encoding: 'utf8' }).trim().split('\n').at(-1))
for (const q of ['bf16', 'dynamic_int8']) {
  const ours = run(['--engine', 'ours', '--model', dir, '--quantization', q])
  const llama = run(['--engine', 'llama', '--model', ggufs[q]])
  console.log(JSON.stringify({ quantization: q, ours: ours.textsPerSecond, llama: llama.textsPerSecond, ratio: Object.fromEntries(Object.keys(ours.textsPerSecond).map((k) => [k, ours.textsPerSecond[k] / llama.textsPerSecond[k]])) }))
}
