// `npm run bench`: builds the synthetic Qwen3-0.6B-shaped checkpoint if missing, exports it as GGUF
// (F16, Q8_0, Q4_0) with this engine, then measures each engine configuration and its llama.cpp peer
// (node-llama-cpp on the GGUF of the same weights) in separate processes, in one run.
// Prints a table with ratios; writes bench/results/latest.json.
//   BENCH_MODES=none,bf16,fp16,dynamic_int8,int4  BENCH_THREADS=2  BENCH_ITERATIONS=2  BENCH_PEER=0 (skip llama.cpp)
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { cpus } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { ModelRunner } from '../dist/index.mjs'
import { makeSyntheticCheckpoint } from '../scripts/make-synthetic-checkpoint.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const model = process.env.BENCH_MODEL ?? makeSyntheticCheckpoint()
const modes = (process.env.BENCH_MODES ?? 'none,bf16,fp16,dynamic_int8,int4').split(',')
const threads = process.env.BENCH_THREADS ?? '2'
const iterations = process.env.BENCH_ITERATIONS ?? '2'
const withPeer = process.env.BENCH_PEER !== '0'
// Our mode -> the llama.cpp type of the same weights.
const peerType = { fp16: 'F16', dynamic_int8: 'Q8_0', int4: 'Q4_0' }

function measure(script, args) {
  const out = execFileSync(process.execPath, [join(here, script), ...args, '--threads', threads, '--iterations', iterations], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  return JSON.parse(out.trim().split('\n').at(-1))
}

async function ensureGguf(mode) {
  const file = join(dirname(model), `${model.split('/').at(-1)}-${peerType[mode]}.gguf`)
  if (!existsSync(file)) {
    console.error(`exporting ${file} ...`)
    const runner = await ModelRunner.load({ modelName: model, accelerationConfig: { quantization: mode } })
    await runner.export(file)
    await runner.dispose()
  }
  return file
}

const rows = []
for (const quantization of modes) {
  console.error(`measuring nano-qwen3-serving ${quantization} ...`)
  const ours = measure('engine-bench.mjs', ['--model', model, '--quantization', quantization])
  let peer
  if (withPeer && peerType[quantization]) {
    const gguf = await ensureGguf(quantization)
    console.error(`measuring node-llama-cpp ${peerType[quantization]} ...`)
    peer = { ...measure('llama-bench.mjs', ['--gguf', gguf]), type: peerType[quantization] }
  }
  rows.push({ ours, peer })
}

const cpu = cpus()[0]?.model ?? 'unknown CPU'
const f = (x, d = 1) => (x === undefined ? '-' : x.toFixed(d))
const ratio = (a, b) => (b ? `${(a / b).toFixed(2)}x` : '-')
console.log(`\nQwen3-0.6B shapes (synthetic weights), ${threads} threads, ${cpu}`)
console.log('prefill: 512-token prompt; decode: 128 tokens after a 32-token prompt, greedy, EOS ignored\n')
console.log('| ours | weights | prefill tok/s | decode tok/s | load s | peak RSS MB | llama.cpp | prefill tok/s | decode tok/s | load s | peak RSS MB | prefill ratio | decode ratio |')
console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|')
for (const { ours: o, peer: p } of rows) {
  console.log(
    `| ${o.quantization} | ${o.weightDtype} | ${f(o.prefillTokensPerSecond)} | ${f(o.decodeTokensPerSecond, 2)} | ${f(o.loadMs / 1000, 2)} | ${f(o.peakRssMb, 0)} | ` +
      `${p?.type ?? '-'} | ${f(p?.prefillTokensPerSecond)} | ${f(p?.decodeTokensPerSecond, 2)} | ${f(p && p.loadMs / 1000, 2)} | ${f(p?.peakRssMb, 0)} | ` +
      `${ratio(o.prefillTokensPerSecond, p?.prefillTokensPerSecond)} | ${ratio(o.decodeTokensPerSecond, p?.decodeTokensPerSecond)} |`,
  )
}
mkdirSync(join(here, 'results'), { recursive: true })
writeFileSync(join(here, 'results', 'latest.json'), JSON.stringify({ date: new Date().toISOString(), cpu, threads, rows }, null, 2))
