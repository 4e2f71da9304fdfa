// `npm run bench`: builds the synthetic Qwen3-0.6B-shaped checkpoint if missing, then measures each
// quantization mode in its own process and prints a table; results go to bench/results/latest.json.
//   BENCH_MODES=none,bf16,fp16  BENCH_THREADS=2  BENCH_ITERATIONS=2
import { execFileSync } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { cpus } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { makeSyntheticCheckpoint } from '../scripts/make-synthetic-checkpoint.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const model = process.env.BENCH_MODEL ?? makeSyntheticCheckpoint()
const modes = (process.env.BENCH_MODES ?? 'none,bf16').split(',')
const threads = process.env.BENCH_THREADS ?? '2'
const iterations = process.env.BENCH_ITERATIONS ?? '2'

const rows = []
for (const quantization of modes) {
  console.error(`measuring ${quantization} ...`)
  const out = execFileSync(
    process.execPath,
    [join(here, 'engine-bench.mjs'), '--model', model, '--quantization', quantization, '--threads', threads, '--iterations', iterations],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] },
  )
  rows.push(JSON.parse(out.trim().split('\n').at(-1)))
}

const cpu = cpus()[0]?.model ?? 'unknown CPU'
console.log(`\nQwen3-0.6B shapes (synthetic weights), ${threads} threads, ${cpu}\n`)
console.log('| mode | weights | load s | prefill tok/s (512) | decode tok/s (128) | weight MB | peak RSS MB |')
console.log('|---|---|---|---|---|---|---|')
for (const r of rows) {
  console.log(
    `| ${r.quantization} | ${r.weightDtype} | ${(r.loadMs / 1000).toFixed(2)} | ${r.prefillTokensPerSecond.toFixed(1)} | ${r.decodeTokensPerSecond.toFixed(2)} | ${(r.weightBytes / 2 ** 20).toFixed(0)} | ${r.peakRssMb.toFixed(0)} |`,
  )
}
mkdirSync(join(here, 'results'), { recursive: true })
writeFileSync(join(here, 'results', 'latest.json'), JSON.stringify({ date: new Date().toISOString(), cpu, threads, rows }, null, 2))
