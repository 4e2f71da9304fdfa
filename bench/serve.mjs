// `npm run bench:serve`: serving under concurrency, this engine against llama.cpp (node-llama-cpp) on
// the GGUF export of the same weights (the synthetic Qwen3-0.6B-shaped checkpoint, as `npm run bench`),
// same threads, greedy, EOS ignored. Each measurement runs in its own process (bench/serve-engine.mjs,
// bench/serve-llama.mjs; scenarios and definitions in bench/serve-lib.mjs).
//  1. For each weight type and each number of concurrent streams (distinct 32-token prompts, 128 new
//     tokens each, all submitted at once): aggregate decode tokens/s, inter-token latency p50/p99,
//     time to first token p50/p99. Ours: one ModelRunner, N concurrent stream() calls. Peer: one
//     context with N sequences, one sequence.evaluate() per stream.
//  1b. HTTP: at SERVE_HTTP_STREAMS (16) streams, the same load through the OpenAI-compatible server
//     (streaming /v1/completions on 127.0.0.1), against in-process in the same run.
//  2. Time to first token behind a shared 1,024-token prefix: cold, then cached (ours).
//  3. Inter-token latency p99 of 8 running streams while a 2,048-token prompt is admitted, against the
//     same 8 streams unloaded (ours, and the peer).
// Prints tables with ratios; writes bench/results/serve-latest.json and bench/serve.svg (both also after
// every measurement, so an interrupted run keeps what it measured).
//   SERVE_MODES=bf16,dynamic_int8,int4  SERVE_STREAMS=1,4,8,16,32  SERVE_NEW_TOKENS=128
//   SERVE_PROMPT_TOKENS=32  SERVE_THREADS=2  SERVE_PEER=0 (skip llama.cpp)
//   SERVE_HTTP=0 (skip 1b)  SERVE_HTTP_STREAMS=16
//   SERVE_PREFIX=0 / SERVE_ADMISSION=0 (skip scenario 2 / 3)  SERVE_SCENARIO_MODE=dynamic_int8 (for 2 and 3)
//   SERVE_PREFIX_TOKENS=1024  SERVE_LONG_PROMPT_TOKENS=2048  SERVE_ADMISSION_STREAMS=8  SERVE_ADMISSION_PEER=0
//   Serving load options of ours, passed only when set: SERVE_KV_CACHE_MEMORY (bytes), SERVE_MAX_BATCH_TOKENS,
//   SERVE_MAX_CONCURRENT_SEQUENCES, SERVE_ENABLE_PREFIX_CACHING=1|0.  SERVE_PEER_BATCH_SIZE=512 (llama.cpp batch).
//   SERVE_PEER_LOCKSTEP=0: llama.cpp streams scheduled by node-llama-cpp alone (see bench/serve-llama.mjs).
//   SERVE_RAW=1: every stream's chunk times in the JSON.
//   SERVE_MODEL=DIR (default: the synthetic checkpoint, built if missing)
// Quick smoke run: SERVE_MODES=dynamic_int8 SERVE_STREAMS=1,2 SERVE_NEW_TOKENS=8 npm run bench:serve
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { cpus } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { ModelRunner } from '../dist/index.mjs'
import { makeSyntheticCheckpoint } from '../scripts/make-synthetic-checkpoint.mjs'
import { serveSvg } from './serve-chart.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const env = process.env
const model = env.SERVE_MODEL ?? env.BENCH_MODEL ?? makeSyntheticCheckpoint()
const modes = (env.SERVE_MODES ?? 'bf16,dynamic_int8,int4').split(',')
const streamCounts = (env.SERVE_STREAMS ?? '1,4,8,16,32').split(',').map(Number)
const threads = env.SERVE_THREADS ?? '2'
const newTokens = env.SERVE_NEW_TOKENS ?? '128'
const promptTokens = env.SERVE_PROMPT_TOKENS ?? '32'
const withPeer = env.SERVE_PEER !== '0'
const scenarioMode = env.SERVE_SCENARIO_MODE ?? 'dynamic_int8'
const prefixTokens = env.SERVE_PREFIX_TOKENS ?? '1024'
const longPromptTokens = env.SERVE_LONG_PROMPT_TOKENS ?? '2048'
const admissionStreams = env.SERVE_ADMISSION_STREAMS ?? '8'
// Our mode -> the llama.cpp type of the same weights (as bench/run.mjs).
const peerType = { bf16: 'F16', fp16: 'F16', dynamic_int8: 'Q8_0', static_int8: 'Q8_0', int4: 'Q4_0' }
const serving = Object.fromEntries(
  ['SERVE_KV_CACHE_MEMORY', 'SERVE_MAX_BATCH_TOKENS', 'SERVE_MAX_CONCURRENT_SEQUENCES', 'SERVE_ENABLE_PREFIX_CACHING', 'SERVE_PEER_BATCH_SIZE', 'SERVE_PEER_LOCKSTEP']
    .filter((k) => env[k])
    .map((k) => [k, env[k]]),
)

function measure(script, args) {
  const label = `${script} ${args.filter((a) => !a.startsWith('/')).join(' ')}`
  console.error(`measuring: ${label} ...`)
  try {
    const out = execFileSync(process.execPath, [join(here, script), ...args, '--threads', threads], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    return JSON.parse(out.trim().split('\n').at(-1))
  } catch (e) {
    console.error(`FAILED: ${label}: ${e.message.split('\n')[0]}`)
    return { error: e.message.split('\n')[0] }
  }
}

async function ensureGguf(mode) {
  // Same file names as bench/run.mjs, so either benchmark reuses the other's export.
  const file = join(dirname(model), `${model.split('/').at(-1)}-${peerType[mode]}.gguf`)
  if (!existsSync(file)) {
    // F16 from fp16, Q8_0 from dynamic_int8 (llama.cpp's own Q8_0 rule), Q4_0 from int4.
    mode = { F16: 'fp16', Q8_0: 'dynamic_int8', Q4_0: 'int4' }[peerType[mode]]
    console.error(`exporting ${file} ...`)
    const runner = await ModelRunner.load({ modelName: model, accelerationConfig: { quantization: mode }, onLoadProgress: false })
    await runner.export(file)
    await runner.dispose()
  }
  return file
}

const cpu = cpus()[0]?.model ?? 'unknown CPU'
const results = {
  date: new Date().toISOString(),
  cpu,
  threads: Number(threads),
  config: { model, promptTokens: Number(promptTokens), newTokens: Number(newTokens), streams: streamCounts, modes, serving },
  concurrency: [],
  prefix: undefined,
  admission: undefined,
}
const title = `Serving, Qwen3-0.6B shapes (synthetic weights), ${threads} threads, ${cpu}`
const subtitle = `${promptTokens}-token prompts (distinct), ${newTokens} new tokens per stream, greedy, EOS ignored; decode tok/s = tokens after each stream's first / (last token - first token)`

function save() {
  mkdirSync(join(here, 'results'), { recursive: true })
  writeFileSync(join(here, 'results', 'serve-latest.json'), JSON.stringify(results, null, 2))
  const panels = modes.map((mode) => {
    const rows = results.concurrency.filter((r) => r.quantization === mode)
    return {
      label: mode,
      peerLabel: withPeer ? peerType[mode] : undefined,
      points: rows.map((r) => ({ streams: r.streams, ours: r.ours?.decodeTokensPerSecond, peer: r.peer?.decodeTokensPerSecond })),
    }
  })
  writeFileSync(join(here, 'serve.svg'), serveSvg(panels.filter((p) => p.points.length), title, subtitle))
}

const common = ['--prompt-tokens', promptTokens, '--new-tokens', newTokens]

// 1. Concurrency sweep, ours and the peer alternating at each stream count.
for (const quantization of modes) {
  const gguf = withPeer && peerType[quantization] ? await ensureGguf(quantization) : undefined
  for (const streams of streamCounts) {
    const row = { quantization, streams }
    results.concurrency.push(row)
    row.ours = measure('serve-engine.mjs', ['--model', model, '--quantization', quantization, '--scenario', 'concurrency', '--streams', String(streams), ...common])
    if (gguf) row.peer = { type: peerType[quantization], ...measure('serve-llama.mjs', ['--gguf', gguf, '--scenario', 'concurrency', '--streams', String(streams), ...common]) }
    save()
  }
}

// 1b. Through the HTTP server, against in-process at the same stream count, back to back.
if (env.SERVE_HTTP !== '0') {
  const streams = env.SERVE_HTTP_STREAMS ?? '16'
  const args = ['--model', model, '--quantization', scenarioMode, '--scenario', 'concurrency', '--streams', streams, ...common]
  results.http = { streams: Number(streams), inProcess: measure('serve-engine.mjs', args), http: measure('serve-engine.mjs', [...args, '--http']) }
  save()
}

// 2. Shared-prefix time to first token (ours).
if (env.SERVE_PREFIX !== '0') {
  results.prefix = measure('serve-engine.mjs', ['--model', model, '--quantization', scenarioMode, '--scenario', 'prefix', '--prefix-tokens', prefixTokens])
  save()
}

// 3. A long prompt admitted while streams run (ours, and the peer unless SERVE_ADMISSION_PEER=0).
if (env.SERVE_ADMISSION !== '0') {
  const args = ['--scenario', 'admission', '--streams', admissionStreams, '--long-prompt-tokens', longPromptTokens, ...common]
  results.admission = { ours: measure('serve-engine.mjs', ['--model', model, '--quantization', scenarioMode, ...args]) }
  if (withPeer && env.SERVE_ADMISSION_PEER !== '0' && peerType[scenarioMode]) {
    results.admission.peer = { type: peerType[scenarioMode], ...measure('serve-llama.mjs', ['--gguf', await ensureGguf(scenarioMode), ...args]) }
  }
  save()
}

const f = (x, d = 1) => (x === undefined || x === null || Number.isNaN(x) ? '-' : x.toFixed(d))
const ratio = (a, b) => (a !== undefined && b ? `${(a / b).toFixed(2)}x` : '-')
console.log(`\n${title}`)
console.log(`${subtitle}`)
console.log('ITL: gaps between streamed chunks, pooled over all streams; TTFT: from submission (all streams submitted at once)')
console.log('tok/step: about how many streams got a token per engine step (1: requests take turns; N: one batch)')
const peerScheduling = results.concurrency.find((r) => r.peer?.scheduling)?.peer.scheduling
if (peerScheduling) console.log(`llama.cpp scheduling: ${peerScheduling}`)
if (Object.keys(serving).length) console.log(`serving options: ${JSON.stringify(serving)}`)
console.log('ratios are ours / llama.cpp: above 1 is better for tok/s, below 1 is better for latencies\n')
console.log(
  '| ours | streams | decode tok/s | tok/step | ITL p50 ms | ITL p99 ms | TTFT p50 ms | TTFT p99 ms | llama.cpp | decode tok/s | tok/step | ITL p50 ms | ITL p99 ms | TTFT p50 ms | TTFT p99 ms | decode ratio | ITL p99 ratio | TTFT p99 ratio |',
)
console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
for (const { quantization, streams, ours: o = {}, peer: p } of results.concurrency) {
  console.log(
    `| ${quantization}${o.error ? ' (failed)' : ''} | ${streams} | ${f(o.decodeTokensPerSecond, 2)} | ${f(o.tokensPerStep)} | ${f(o.itlP50Ms)} | ${f(o.itlP99Ms)} | ${f(o.ttftP50Ms, 0)} | ${f(o.ttftP99Ms, 0)} | ` +
      `${p ? p.type + (p.error ? ' (failed)' : '') : '-'} | ${f(p?.decodeTokensPerSecond, 2)} | ${f(p?.tokensPerStep)} | ${f(p?.itlP50Ms)} | ${f(p?.itlP99Ms)} | ${f(p?.ttftP50Ms, 0)} | ${f(p?.ttftP99Ms, 0)} | ` +
      `${ratio(o.decodeTokensPerSecond, p?.decodeTokensPerSecond)} | ${ratio(o.itlP99Ms, p?.itlP99Ms)} | ${ratio(o.ttftP99Ms, p?.ttftP99Ms)} |`,
  )
}
if (results.http) {
  const { streams, inProcess: a, http: b } = results.http
  console.log(`\n${streams} streams through the HTTP server (streaming /v1/completions on 127.0.0.1) against in-process, same run (${scenarioMode})\n`)
  console.log('| path | decode tok/s | ITL p99 ms | TTFT p50 ms | HTTP / in-process |')
  console.log('|---|---|---|---|---|')
  console.log(`| in-process | ${f(a.decodeTokensPerSecond, 2)} | ${f(a.itlP99Ms)} | ${f(a.ttftP50Ms, 0)} | |`)
  console.log(`| HTTP${b.error ? ' (failed)' : ''} | ${f(b.decodeTokensPerSecond, 2)} | ${f(b.itlP99Ms)} | ${f(b.ttftP50Ms, 0)} | ${ratio(b.decodeTokensPerSecond, a.decodeTokensPerSecond)} |`)
}
if (results.prefix) {
  const x = results.prefix
  console.log(`\nTime to first token behind a shared ${prefixTokens}-token prefix (${scenarioMode}; prefix caching: ${x.prefixCaching ?? '-'}; mean of ${x.pairs?.length ?? 0} prefixes)\n`)
  console.log('| cold TTFT ms | cached TTFT ms | cold / cached |')
  console.log('|---|---|---|')
  console.log(`| ${f(x.coldTtftMs, 0)} | ${f(x.cachedTtftMs, 0)} | ${f(x.coldOverCached, 2)}x |`)
}
if (results.admission) {
  console.log(`\n${admissionStreams} running streams while a ${longPromptTokens}-token prompt is admitted (${scenarioMode}); window = submission to its first token\n`)
  console.log('| engine | unloaded ITL p99 ms | loaded ITL p99 ms | ratio | window ITL p99 ms | window ITL max ms | window ratio | long prompt TTFT ms |')
  console.log('|---|---|---|---|---|---|---|---|')
  for (const [name, a] of [
    ['ours', results.admission.ours],
    [`llama.cpp ${results.admission.peer?.type ?? ''}`, results.admission.peer],
  ]) {
    if (!a) continue
    console.log(
      `| ${name}${a.error ? ' (failed)' : ''} | ${f(a.unloaded?.itlP99Ms)} | ${f(a.loaded?.itlP99Ms)} | ${f(a.itlP99Ratio, 2)}x | ${f(a.loaded?.windowItlP99Ms)} | ${f(a.loaded?.windowItlMaxMs)} | ${f(a.windowItlP99Ratio, 2)}x | ${f(a.loaded?.longTtftMs, 0)} |`,
    )
  }
}
save()
console.error('wrote bench/results/serve-latest.json and bench/serve.svg')
