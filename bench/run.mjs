// `npm run bench`: builds the synthetic Qwen3-0.6B-shaped checkpoint if missing, exports it as GGUF
// (F16, Q8_0, Q4_0) with this engine, then measures each engine configuration and its llama.cpp peer
// (node-llama-cpp on the GGUF of the same weights) in separate processes, in one run.
// Prints a table with ratios; writes bench/results/latest.json.
// Then the ablations: each optimization switched off (or on) alone, and a 4096-token prompt with and
// without chunked prefill (peak RSS). Draws bench/comparison.svg.
//   BENCH_MODES=none,bf16,fp16,dynamic_int8,static_int8,int4  BENCH_THREADS=2  BENCH_ITERATIONS=2
//   BENCH_PEER=0 (skip llama.cpp)  BENCH_ABLATION=0 (skip ablations)  BENCH_ABLATION_MODE=dynamic_int8
//   BENCH_FILES=0 (skip: our engine on llama.cpp's own GGUF files, peak RSS and load; the second
//   load of int4 / static_int8 from the prepared-weights cache)
// `npm run bench -- --device gpu` (or gpu:N, vulkan, metal, dx12, auto): our rows on that device, the
// adapter printed (on a software adapter such as lavapipe the figures are not GPU speed).
// `npm run bench -- --real`: the real Qwen2.5-Coder 0.5B / 1.5B GGUF files instead (bench/real-bench.mjs).
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { ModelRunner } from '../dist/index.mjs'
import { makeSyntheticCheckpoint } from '../scripts/make-synthetic-checkpoint.mjs'
import { comparisonSvg } from './chart.mjs'

if (process.argv.includes('--real')) {
  await import('./real-bench.mjs')
  process.exit(0)
}

const here = dirname(fileURLToPath(import.meta.url))
const model = process.env.BENCH_MODEL ?? makeSyntheticCheckpoint()
const modes = (process.env.BENCH_MODES ?? 'none,bf16,fp16,dynamic_int8,static_int8,int4').split(',')
const threads = process.env.BENCH_THREADS ?? '2'
const deviceAt = process.argv.indexOf('--device')
const device = deviceAt > 0 ? process.argv[deviceAt + 1] : 'cpu'
const iterations = process.env.BENCH_ITERATIONS ?? '2'
const withPeer = process.env.BENCH_PEER !== '0'
// BENCH_PREFILL_TOKENS / BENCH_DECODE_TOKENS (default 512 / 128): shorter runs for slow devices (lavapipe).
const tokenArgs = [
  ...(process.env.BENCH_PREFILL_TOKENS ? ['--prefill-tokens', process.env.BENCH_PREFILL_TOKENS] : []),
  ...(process.env.BENCH_DECODE_TOKENS ? ['--decode-tokens', process.env.BENCH_DECODE_TOKENS] : []),
]
// Our mode -> the llama.cpp type of the same weights.
const peerType = { bf16: 'F16', fp16: 'F16', dynamic_int8: 'Q8_0', static_int8: 'Q8_0', int4: 'Q4_0' }
const peerCache = {}

function measure(script, args, its = iterations) {
  const out = execFileSync(process.execPath, [join(here, script), ...args, '--threads', threads, '--iterations', its], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  return JSON.parse(out.trim().split('\n').at(-1))
}

async function ensureGguf(mode) {
  const file = join(dirname(model), `${model.split('/').at(-1)}-${peerType[mode]}.gguf`)
  if (!existsSync(file)) {
    // F16 from fp16, Q8_0 from dynamic_int8 (llama.cpp's own Q8_0 rule), Q4_0 from int4.
    mode = { F16: 'fp16', Q8_0: 'dynamic_int8', Q4_0: 'int4' }[peerType[mode]]
    console.error(`exporting ${file} ...`)
    const runner = await ModelRunner.load({ modelName: model, accelerationConfig: { quantization: mode } })
    await runner.export(file)
    await runner.dispose()
  }
  return file
}

// A fresh prepared-weights cache: the table's int4 / static_int8 loads are first (cold) loads.
process.env.NANO_QWEN3_WEIGHT_CACHE_DIR = mkdtempSync(join(tmpdir(), 'nano-qwen3-bench-cache-'))

const rows = []
for (const quantization of modes) {
  console.error(`measuring nano-qwen3-serving ${quantization} ...`)
  const ours = measure('engine-bench.mjs', ['--model', model, '--quantization', quantization, '--device', device, ...tokenArgs])
  console.error(`  on ${ours.device}`)
  let peer
  if (withPeer && peerType[quantization]) {
    const type = peerType[quantization]
    if (!peerCache[type]) {
      const gguf = await ensureGguf(quantization)
      console.error(`measuring node-llama-cpp ${type} ...`)
      // On a GPU run the peer runs on llama.cpp's own GPU backend (Vulkan / Metal / CUDA, all layers).
      peerCache[type] = { ...measure('llama-bench.mjs', ['--gguf', gguf, ...(device === 'cpu' ? [] : ['--gpu', 'auto']), ...tokenArgs]), type }
      console.error(`  llama.cpp on ${peerCache[type].device}`)
    }
    peer = peerCache[type]
  }
  rows.push({ ours, peer })
}

const cpu = cpus()[0]?.model ?? 'unknown CPU'
const f = (x, d = 1) => (x === undefined ? '-' : x.toFixed(d))
const ratio = (a, b) => (b ? `${(a / b).toFixed(2)}x` : '-')
console.log(`\nQwen3-0.6B shapes (synthetic weights), ${threads} threads, ${cpu}`)
console.log(`prefill: ${process.env.BENCH_PREFILL_TOKENS ?? 512}-token prompt; decode: ${process.env.BENCH_DECODE_TOKENS ?? 128} tokens after a 32-token prompt, greedy, EOS ignored`)
if (device !== 'cpu') console.log(`ours on ${rows[0]?.ours.device}; llama.cpp on ${Object.values(peerCache)[0]?.device ?? '-'}`)
console.log('')
console.log('| ours | weights | prefill tok/s | decode tok/s | load s | peak RSS MB | llama.cpp | prefill tok/s | decode tok/s | load s | peak RSS MB | prefill ratio | decode ratio |')
console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|')
for (const { ours: o, peer: p } of rows) {
  console.log(
    `| ${o.quantization} | ${o.weightDtype} | ${f(o.prefillTokensPerSecond)} | ${f(o.decodeTokensPerSecond, 2)} | ${f(o.loadMs / 1000, 2)} | ${f(o.peakRssMb, 0)} | ` +
      `${p?.type ?? '-'} | ${f(p?.prefillTokensPerSecond)} | ${f(p?.decodeTokensPerSecond, 2)} | ${f(p && p.loadMs / 1000, 2)} | ${f(p?.peakRssMb, 0)} | ` +
      `${ratio(o.prefillTokensPerSecond, p?.prefillTokensPerSecond)} | ${ratio(o.decodeTokensPerSecond, p?.decodeTokensPerSecond)} |`,
  )
}
// The same GGUF files in both engines: peak RSS and load time (ours as stored: `none`), and the
// second load of the modes that compute at load, read from the prepared-weights cache, against
// llama.cpp loading a GGUF of the same size.
const files = []
if (withPeer && process.env.BENCH_FILES !== '0') {
  for (const [type, peer] of Object.entries(peerCache)) {
    const gguf = await ensureGguf({ F16: 'fp16', Q8_0: 'dynamic_int8', Q4_0: 'int4' }[type])
    console.error(`our engine on ${gguf} ...`)
    files.push({ label: `${type} file, ours as stored`, ours: measure('engine-bench.mjs', ['--model', gguf, '--quantization', 'none'], '1'), peer })
  }
  for (const [mode, type] of [['int4', 'Q4_0'], ['static_int8', 'Q8_0']]) {
    if (!modes.includes(mode) || !peerCache[type]) continue
    console.error(`second load of ${mode} (prepared-weights cache) ...`)
    files.push({ label: `${mode}, second load (cached) vs ${type}`, ours: measure('engine-bench.mjs', ['--model', model, '--quantization', mode], '1'), peer: peerCache[type] })
  }
  console.log('\nSame GGUF files / cached preparation: peak RSS and load time against llama.cpp\n')
  console.log('| ours | weights | peak RSS MB | load s | llama.cpp | peak RSS MB | load s | RSS ratio | load ratio |')
  console.log('|---|---|---|---|---|---|---|---|---|')
  for (const { label, ours: o, peer: p } of files) {
    console.log(
      `| ${label} | ${o.weightDtype} | ${f(o.peakRssMb, 0)} | ${f(o.loadMs / 1000, 2)} | ${p.type} | ${f(p.peakRssMb, 0)} | ${f(p.loadMs / 1000, 2)} | ` +
        `${ratio(o.peakRssMb, p.peakRssMb)} | ${ratio(o.loadMs, p.loadMs)} |`,
    )
  }
}

// Ablations: one optimization changed at a time from the defaults (all on).
const ablation = []
if (process.env.BENCH_ABLATION !== '0') {
  const mode = process.env.BENCH_ABLATION_MODE ?? 'dynamic_int8'
  const variants = [
    ['defaults (flash attention, fused kernels, repacking on)', {}],
    ['useFlashAttention: false', { useFlashAttention: false }],
    ['useFusedKernels: false', { useFusedKernels: false }],
    ['useChannelsLast: false (no repacking)', { useChannelsLast: false }],
    ['all three off', { useFlashAttention: false, useFusedKernels: false, useChannelsLast: false }],
    ["compileMode: 'reduce-overhead'", { useTorchCompile: true, compileMode: 'reduce-overhead' }],
    ["compileMode: 'max-autotune' (tilings measured at load)", { useTorchCompile: true, compileMode: 'max-autotune' }],
    ["kvCacheDtype: 'f16'", { kvCacheDtype: 'f16' }],
  ]
  // max-autotune measures at load when its cache is empty: a fresh cache so the load time shows it.
  process.env.NANO_QWEN3_AUTOTUNE_CACHE = join(dirname(model), 'autotune-bench.json')
  rmSync(process.env.NANO_QWEN3_AUTOTUNE_CACHE, { force: true })
  for (const [label, accel] of variants) {
    console.error(`ablation (${mode}): ${label} ...`)
    ablation.push({ label, ...measure('engine-bench.mjs', ['--model', model, '--quantization', mode, '--accel', JSON.stringify(accel)]) })
  }
  console.log(`\nEach optimization alone (${mode}; every other option at its default)\n`)
  console.log('| configuration | prefill tok/s | decode tok/s | peak RSS MB | load s |')
  console.log('|---|---|---|---|---|')
  for (const a of ablation) {
    console.log(`| ${a.label} | ${f(a.prefillTokensPerSecond)} | ${f(a.decodeTokensPerSecond, 2)} | ${f(a.peakRssMb, 0)} | ${f(a.loadMs / 1000, 1)} |`)
  }
  // Chunked prefill: a 4096-token prompt, peak RSS with and without.
  const long = []
  for (const [label, accel] of [['whole prompt', {}], ['useGradientCheckpointing: true (chunks of 256)', { useGradientCheckpointing: true }]]) {
    console.error(`4096-token prompt: ${label} ...`)
    long.push({ label, ...measure('engine-bench.mjs', ['--model', model, '--quantization', mode, '--prefill-tokens', '4096', '--decode-tokens', '2', '--accel', JSON.stringify(accel)], '1') })
  }
  console.log(`\n4096-token prompt (${mode})\n`)
  console.log('| prefill | prefill tok/s | peak RSS MB |')
  console.log('|---|---|---|')
  for (const a of long) console.log(`| ${a.label} | ${f(a.prefillTokensPerSecond)} | ${f(a.peakRssMb, 0)} |`)
  ablation.push(...long.map((l) => ({ ...l, longPrompt: true })))
}

mkdirSync(join(here, 'results'), { recursive: true })
writeFileSync(join(here, 'results', 'latest.json'), JSON.stringify({ date: new Date().toISOString(), cpu, threads, rows, files, ablation }, null, 2))
const chartRows = rows.map(({ ours: o, peer: p }) => ({
  label: `${o.quantization}`,
  ours: { prefill: o.prefillTokensPerSecond, decode: o.decodeTokensPerSecond },
  peer: p && { label: p.type, prefill: p.prefillTokensPerSecond, decode: p.decodeTokensPerSecond },
}))
// The README's chart is the CPU comparison at the default lengths; other runs leave it alone.
if (device === 'cpu' && !tokenArgs.length) {
  writeFileSync(join(here, 'comparison.svg'), comparisonSvg(chartRows, `Qwen3-0.6B shapes, ${threads} threads, ${cpu}`))
  console.error('wrote bench/results/latest.json and bench/comparison.svg')
} else console.error('wrote bench/results/latest.json')
