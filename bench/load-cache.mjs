// Load time of the modes that compute at load (static_int8, int4): the first load (computes, then
// writes the prepared-weights cache) and the second (reads it), against llama.cpp loading a GGUF of
// the same size (the Q8_0 / Q4_0 export of the same weights), each in its own process.
//   node bench/load-cache.mjs [--model DIR] (default: the synthetic Qwen3-0.6B checkpoint of `npm run bench`)
import { execFileSync } from 'node:child_process'
import { existsSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { makeSyntheticCheckpoint } from '../scripts/make-synthetic-checkpoint.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const { values: o } = parseArgs({ options: { model: { type: 'string' }, child: { type: 'string' }, gguf: { type: 'string' } } })

if (o.child === 'ours') {
  const { ModelRunner } = await import('../dist/index.mjs')
  const r = await ModelRunner.load({ modelName: o.model, threads: 2, accelerationConfig: { quantization: process.env.MODE }, onLoadProgress: false })
  console.log(JSON.stringify({ loadMs: r.getModelInfo().loadTimeMs, cache: r.getModelInfo().weightCache.status }))
  await r.dispose()
  process.exit(0)
}
if (o.child === 'export') {
  const { ModelRunner } = await import('../dist/index.mjs')
  const r = await ModelRunner.load({ modelName: o.model, accelerationConfig: { quantization: process.env.MODE }, onLoadProgress: false, weightCache: false })
  await r.export(o.gguf)
  await r.dispose()
  console.log('{}')
  process.exit(0)
}
if (o.child === 'llama') {
  const { getLlama } = await import('node-llama-cpp')
  const llama = await getLlama({ gpu: false, logLevel: 'error' })
  const t0 = performance.now()
  const model = await llama.loadModel({ modelPath: o.gguf, gpuLayers: 0 })
  console.log(JSON.stringify({ loadMs: performance.now() - t0 }))
  await model.dispose()
  process.exit(0)
}

const model = o.model ?? makeSyntheticCheckpoint()
const cache = mkdtempSync(join(tmpdir(), 'nano-qwen3-load-cache-'))
const run = (args, env = {}) =>
  JSON.parse(execFileSync(process.execPath, [fileURLToPath(import.meta.url), ...args], { encoding: 'utf8', env: { ...process.env, NANO_QWEN3_WEIGHT_CACHE_DIR: cache, ...env } }).trim().split('\n').at(-1))
console.log('| mode | first load s (cache written) | second load s (cache read) | llama.cpp load s, same-size GGUF | second load / llama.cpp |')
console.log('|---|---|---|---|---|')
for (const [mode, type] of [['static_int8', 'Q8_0'], ['int4', 'Q4_0']]) {
  const gguf = join(dirname(model), `${model.split('/').at(-1)}-${type}.gguf`)
  // The same weights as llama.cpp's format (as `npm run bench` exports them), once.
  if (!existsSync(gguf)) run(['--child', 'export', '--model', model, '--gguf', gguf], { MODE: mode === 'int4' ? 'int4' : 'dynamic_int8' })
  const first = run(['--child', 'ours', '--model', model], { MODE: mode })
  const second = run(['--child', 'ours', '--model', model], { MODE: mode })
  const peer = run(['--child', 'llama', '--gguf', gguf])
  if (first.cache !== 'written' || second.cache !== 'hit') throw new Error(`cache ${first.cache} then ${second.cache}`)
  console.log(`| ${mode} | ${(first.loadMs / 1000).toFixed(2)} | ${(second.loadMs / 1000).toFixed(2)} | ${(peer.loadMs / 1000).toFixed(2)} (${type}) | ${(second.loadMs / peer.loadMs).toFixed(2)}x |`)
}
