// Quality of each quantization mode on a real model (`npm run quality -- --real`): perplexity on
// held-out text in the model's domain (Python standard-library source, found on every machine with
// Python) and mean KL divergence from our f32 path (`fp32`: every tensor of the GGUF dequantized to
// f32), side by side with llama.cpp (node-llama-cpp) on GGUF files of the same weights exported by
// this engine: Q8_0 (our dynamic_int8 export is llama.cpp's Q8_0 rule) and Q4_0 with llama.cpp's own
// scale rule (abs-max), plus the file as published, each against llama.cpp's run of our F32 export.
// The text is cut into windows of 512 tokens, each evaluated from an empty context. Our perplexity
// counts every position; KL, and everything llama.cpp is measured on, counts every 16th position of
// each window (node-llama-cpp hands out a whole-vocabulary Map per position: 0.14 s each), and
// `ppl@kl` is the perplexity over those positions, for the side-by-side columns.
//   node bench/real-quality.mjs [--model 0.5b|1.5b|FILE] [--tokens 20480] [--every 16] [--peer 0] [--ours 0]
//                               [--only TEXT[,TEXT...]]   (rows whose label contains one of the texts;
//                                                          the f32 references always run)
//   REAL_PUBLISHED=0 skips llama.cpp on the published file
// Writes bench/results/real-quality-<model>.json.
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { getLlama } from 'node-llama-cpp'
import { ModelRunner } from '../dist/index.mjs'
import { REAL_MODELS, realModel } from './real-models.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const { values: o } = parseArgs({
  args: process.argv.slice(2).filter((a) => a !== '--real'),
  options: {
    model: { type: 'string', default: '0.5b' },
    tokens: { type: 'string', default: '20480' },
    every: { type: 'string', default: '16' },
    peer: { type: 'string', default: '1' },
    ours: { type: 'string', default: '1' },
    only: { type: 'string' },
  },
})
const file = REAL_MODELS[o.model] ? realModel(o.model) : o.model
const WINDOW = 512
const every = Number(o.every)
const stem = basename(file, '.gguf')

// Held-out text: standard-library modules, concatenated in a fixed order (not the calibration texts).
const MODULES = ['textwrap', 'shlex', 'fnmatch', 'bisect', 'heapq', 'string', 'graphlib', 'colorsys', 'contextlib', 'functools', 'dataclasses', 'argparse']
const stdlib = execFileSync('python3', ['-c', "import sysconfig; print(sysconfig.get_paths()['stdlib'])"], { encoding: 'utf8' }).trim()
const text = MODULES.map((m) => readFileSync(join(stdlib, `${m}.py`), 'utf8')).join('\n\n')

const MODES = [
  ['fp32', { quantization: 'fp32' }],
  ['none (as stored)', { quantization: 'none' }],
  ['bf16', { quantization: 'bf16' }],
  ['dynamic_int8', { quantization: 'dynamic_int8' }],
  ['static_int8', { quantization: 'static_int8' }],
  ['static_int8, no SmoothQuant', { quantization: 'static_int8', calibration: { smoothing: 0 } }],
  ['int4 (groups of 32)', { quantization: 'int4' }],
  ['int4, lm_head in Q4_0 too', { quantization: 'int4', int4LmHead: 'q4_0' }],
  ['int4, no activation-aware scaling', { quantization: 'int4', calibration: { smoothing: 0 } }],
  ['int4 (groups of 128)', { quantization: 'int4', int4GroupSize: 128 }],
]
const wanted = (label, isReference) => isReference || !o.only || o.only.split(',').some((t) => label.includes(t))

/** log Σ exp(row). */
function logSumExp(row) {
  let m = -Infinity
  for (let j = 0; j < row.length; j++) if (row[j] > m) m = row[j]
  let s = 0
  for (let j = 0; j < row.length; j++) s += Math.exp(row[j] - m)
  return m + Math.log(s)
}

const isKlPosition = (i) => i % every === every - 1

/** Sums over the windows: NLL at every position and at the KL positions, KL against `ref`. */
class Tally {
  constructor() {
    Object.assign(this, { nll: 0, n: 0, nllKl: 0, nKl: 0, kl: 0, top1: 0 })
  }
  /** `logp(j)` = log-probability of token j at this position; `ref` = the reference's row (log-probs). */
  add(i, target, logp, ref, vocab) {
    const nll = -logp(target)
    this.nll += nll
    this.n++
    if (!isKlPosition(i)) return
    this.nllKl += nll
    this.nKl++
    if (!ref) return
    let kl = 0
    let best = [0, -Infinity]
    let bestRef = [0, -Infinity]
    for (let j = 0; j < vocab; j++) {
      const lp = logp(j)
      if (ref[j] > -80) kl += Math.exp(ref[j]) * (ref[j] - lp)
      if (lp > best[1]) best = [j, lp]
      if (ref[j] > bestRef[1]) bestRef = [j, ref[j]]
    }
    this.kl += kl
    if (best[0] === bestRef[0]) this.top1++
  }
  result() {
    return {
      perplexity: this.n ? Math.exp(this.nll / this.n) : undefined,
      perplexityAtKl: Math.exp(this.nllKl / this.nKl),
      meanKl: this.kl / this.nKl,
      top1: this.top1 / this.nKl,
    }
  }
}

const probe = await ModelRunner.load({ modelName: file, onLoadProgress: false })
const vocab = probe.getModelInfo().vocabSize
const ids = probe.tokenize(text).slice(0, Number(o.tokens))
await probe.dispose()
const windows = []
for (let at = 0; at + 2 <= ids.length; at += WINDOW) windows.push(ids.slice(at, at + WINDOW + 1)) // +1: the last target
console.error(`${ids.length} tokens of ${MODULES.length} stdlib modules, ${windows.length} windows of ${WINDOW}; KL every ${every}th position`)

const rows = []
let reference // per window: the KL positions' log-probability rows
for (const [label, accelerationConfig] of o.ours === '0' ? [] : MODES.filter(([label], i) => wanted(label, i === 0))) {
  const t0 = performance.now()
  const runner = await ModelRunner.load({ modelName: file, accelerationConfig, onLoadProgress: false })
  const info = runner.getModelInfo()
  const loadS = (performance.now() - t0) / 1000
  const tally = new Tally()
  const refRows = []
  for (const [w, win] of windows.entries()) {
    const input = win.slice(0, -1)
    const logits = await runner.computeLogits(input, { allPositions: true })
    const keep = []
    for (let i = 0; i < input.length; i++) {
      const row = logits.subarray(i * vocab, (i + 1) * vocab)
      const lse = logSumExp(row)
      const logp = (j) => row[j] - lse
      const ref = reference?.[w][Math.floor(i / every)]
      tally.add(i, win[i + 1], logp, ref, vocab)
      if (!reference && isKlPosition(i)) keep.push(Float32Array.from(row, (x) => x - lse))
    }
    if (!reference) refRows.push(keep)
  }
  const cal = info.quantization.calibration
  const sites = cal ? ` (${cal.staticSites} of ${cal.sites.length} sites static, ${cal.smoothedSites.length} smoothed)` : ''
  const r = { engine: 'ours', mode: label + sites, weights: info.dtype, weightBytes: runner.estimateMemoryUsage().weightBytes, loadS, ...tally.result() }
  if (!reference) Object.assign(r, { meanKl: 0, top1: 1 }) // the reference itself
  reference ??= refRows
  rows.push(r)
  console.error(`ours ${label}: perplexity ${r.perplexity.toFixed(4)}, mean KL ${r.meanKl.toExponential(2)} (${((performance.now() - t0) / 1000).toFixed(0)} s)`)
  await runner.dispose()
}

async function exportAs(accelerationConfig, suffix, env = {}) {
  const out = join(dirname(file), `${stem}-ours-${suffix}.gguf`)
  if (existsSync(out)) return out
  const saved = { ...process.env }
  Object.assign(process.env, env)
  try {
    const runner = await ModelRunner.load({ modelName: file, accelerationConfig, onLoadProgress: false })
    await runner.export(out)
    await runner.dispose()
  } finally {
    for (const k of Object.keys(env)) if (saved[k] === undefined) delete process.env[k]
  }
  return out
}

if (o.peer !== '0') {
  const llama = await getLlama({ gpu: false, logLevel: 'error' })
  // llama.cpp's rows are measured against its own F32 run (node-llama-cpp reports probabilities
  // after its sampler chain, so its distributions are compared with each other, not with ours).
  const peers = [
    ['F32 (our fp32 export): its reference', () => exportAs({ quantization: 'fp32' }, 'F32')],
    ['Q8_0 (our dynamic_int8 export)', () => exportAs({ quantization: 'dynamic_int8' }, 'Q8_0')],
    // llama-quantize's Q4_0: abs-max scales, no calibration, the output matrix at more bits
    // (Q6_K, or Q8_0 where rows do not split into 256s: our Q8_0 lm_head).
    [
      'Q4_0, llama.cpp\'s rule (abs-max; output Q8_0)',
      () => exportAs({ quantization: 'int4', calibration: { smoothing: 0 } }, 'Q4_0-llama-rule', { NANO_QWEN3_Q4_SCALES: 'absmax' }),
    ],
    ...(process.env.REAL_PUBLISHED === '0' ? [] : [['Q4_K_M (the file as published)', () => file]]),
  ].filter(([label], i) => wanted(label, i === 0))
  let llamaReference
  const next = { probabilities: true, options: { temperature: 1, topK: 0, topP: 1, minP: 0 } }
  for (const [label, path] of peers) {
    const gguf = await path()
    const t0 = performance.now()
    const model = await llama.loadModel({ modelPath: gguf, gpuLayers: 0 })
    const loadS = (performance.now() - t0) / 1000
    const context = await model.createContext({ contextSize: WINDOW + 16, threads: 2, batchSize: WINDOW })
    const seq = context.getSequence()
    const tally = new Tally()
    const refRows = []
    for (const [w, win] of windows.entries()) {
      await seq.clearHistory()
      const input = win.slice(0, -1)
      const res = await seq.controlledEvaluate(input.map((t, i) => (isKlPosition(i) ? [t, { generateNext: next }] : t)))
      const keep = []
      for (let i = every - 1; i < input.length; i += every) {
        const probs = res[i].next.probabilities
        const logp = (j) => Math.log(probs.get(j) ?? 1e-30)
        tally.add(i, win[i + 1], logp, llamaReference?.[w][Math.floor(i / every)], vocab)
        if (!llamaReference) keep.push(Float32Array.from({ length: vocab }, (_, j) => logp(j)))
      }
      if (!llamaReference) refRows.push(keep)
    }
    const r = { engine: 'llama.cpp', mode: label, weights: basename(gguf), weightBytes: undefined, loadS, ...tally.result(), perplexity: undefined }
    if (!llamaReference) Object.assign(r, { meanKl: 0, top1: 1 })
    llamaReference ??= refRows
    rows.push(r)
    console.error(`llama.cpp ${label}: ppl@kl ${r.perplexityAtKl.toFixed(4)}, mean KL ${r.meanKl.toExponential(2)} (${((performance.now() - t0) / 1000).toFixed(0)} s)`)
    await context.dispose()
    await model.dispose()
  }
}

const klPositions = windows.reduce((s, w) => s + Math.floor((w.length - 1) / every), 0)
const mb = (b) => (b === undefined ? '-' : (b / 2 ** 20).toFixed(0))
console.log(`\n${basename(file)}: ${ids.length} tokens of Python stdlib source (${MODULES.join(', ')}), windows of ${WINDOW}; KL over ${klPositions} positions (every ${every}th) from our fp32 path (ours) / llama.cpp's F32 run (llama.cpp)\n`)
console.log('| engine | mode | weights | weight MB | perplexity | ppl@kl | mean KL | top-1 agreement |')
console.log('|---|---|---|---|---|---|---|---|')
for (const r of rows) {
  console.log(
    `| ${r.engine} | ${r.mode} | ${r.weights} | ${mb(r.weightBytes)} | ${r.perplexity?.toFixed(4) ?? '-'} | ${r.perplexityAtKl.toFixed(4)} | ${r.meanKl.toExponential(2)} | ${(100 * r.top1).toFixed(1)}% |`,
  )
}
mkdirSync(join(here, 'results'), { recursive: true })
writeFileSync(join(here, 'results', `real-quality-${stem}.json`), JSON.stringify({ date: new Date().toISOString(), file: basename(file), tokens: ids.length, every, rows }, null, 2))
