// Speed on the real Qwen2.5-Coder GGUF files (`npm run bench -- --real`): prefill and decode of our
// modes against node-llama-cpp on the same file (its Q4_K_M as published), each configuration in
// its own process, in one run (same harness as `npm run bench`: bench/engine-bench.mjs and
// bench/llama-bench.mjs).
//   REAL_MODELS=0.5b,1.5b  REAL_MODES=none,bf16,dynamic_int8,int4  BENCH_THREADS=2  BENCH_ITERATIONS=2
// Writes bench/results/real-bench.json.
import { execFileSync } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { cpus } from 'node:os'
import { basename, dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { REAL_MODELS, realModel } from './real-models.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const sizes = (process.env.REAL_MODELS ?? '0.5b,1.5b').split(',')
const modes = (process.env.REAL_MODES ?? 'none,bf16,dynamic_int8,int4').split(',')
const threads = process.env.BENCH_THREADS ?? '2'
const iterations = process.env.BENCH_ITERATIONS ?? '2'

function measure(script, args) {
  const out = execFileSync(process.execPath, [join(here, script), ...args, '--threads', threads, '--iterations', iterations], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  return JSON.parse(out.trim().split('\n').at(-1))
}

const results = []
for (const size of sizes) {
  const file = realModel(size)
  console.error(`[${size}] node-llama-cpp on ${basename(file)} ...`)
  const peer = measure('llama-bench.mjs', ['--gguf', file])
  const ours = []
  for (const quantization of modes) {
    console.error(`[${size}] nano-qwen3-serving ${quantization} ...`)
    ours.push(measure('engine-bench.mjs', ['--model', file, '--quantization', quantization]))
  }
  results.push({ size, file: basename(file), label: REAL_MODELS[size].label, peer, ours })
}

const f = (x, d = 1) => (x === undefined ? '-' : x.toFixed(d))
const ratio = (a, b) => `${(a / b).toFixed(2)}x`
console.log(`\n${threads} threads, ${cpus()[0]?.model ?? 'unknown CPU'}; prefill: 512-token prompt; decode: 128 tokens after a 32-token prompt, greedy, EOS ignored`)
for (const { label, peer, ours } of results) {
  console.log(`\n${label}: llama.cpp (node-llama-cpp 3.21.1) on the file as published: prefill ${f(peer.prefillTokensPerSecond)} tok/s, decode ${f(peer.decodeTokensPerSecond, 2)} tok/s, load ${f(peer.loadMs / 1000, 2)} s, peak RSS ${f(peer.peakRssMb, 0)} MB\n`)
  console.log('| ours | weights as run | prefill tok/s | decode tok/s | load s | peak RSS MB | prefill vs llama.cpp | decode vs llama.cpp |')
  console.log('|---|---|---|---|---|---|---|---|')
  for (const o of ours) {
    console.log(
      `| ${o.quantization} | ${o.weightDtype} | ${f(o.prefillTokensPerSecond)} | ${f(o.decodeTokensPerSecond, 2)} | ${f(o.loadMs / 1000, 2)} | ${f(o.peakRssMb, 0)} | ${ratio(o.prefillTokensPerSecond, peer.prefillTokensPerSecond)} | ${ratio(o.decodeTokensPerSecond, peer.decodeTokensPerSecond)} |`,
    )
  }
}
mkdirSync(join(here, 'results'), { recursive: true })
writeFileSync(join(here, 'results', 'real-bench.json'), JSON.stringify({ date: new Date().toISOString(), threads: Number(threads), results }, null, 2))
