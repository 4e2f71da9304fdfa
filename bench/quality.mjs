// `npm run quality`: how far each quantization mode moves the model's next-token distribution,
// on the tiny fixture and on the synthetic Qwen3-0.6B-shaped checkpoint, and side by side
// llama.cpp's own Q8_0 / Q4_0 on the same weights (node-llama-cpp on GGUF exports).
// Reference for our modes: our `none` path (checkpoint weights, f32 arithmetic); for llama.cpp:
// llama.cpp on the BF16 export (the same weights unquantized). Metrics over every position of a few
// prompts: relative L2 error of the (row-centred) logits, mean KL(reference || mode), top-1 agreement.
//   QUALITY_MODELS=tiny,0.6b  QUALITY_PEER=0 (skip llama.cpp)  QUALITY_MODES=int4,int4-g128 (a subset of ours)
// `npm run quality -- --real [--model 0.5b|1.5b]`: the same on a real model instead (bench/real-quality.mjs).
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { ModelRunner } from '../dist/index.mjs'
import { makeSyntheticCheckpoint } from '../scripts/make-synthetic-checkpoint.mjs'

if (process.argv.includes('--real')) {
  await import('./real-quality.mjs')
  process.exit(0)
}

const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, '..')
const which = (process.env.QUALITY_MODELS ?? 'tiny,0.6b').split(',')
const withPeer = process.env.QUALITY_PEER !== '0'
// Our modes: label -> acceleration config.
const ALL_MODES = [
  ...['bf16', 'fp16', 'dynamic_int8', 'static_int8', 'int4'].map((q) => [q, { quantization: q }]),
  ['int4-g128', { quantization: 'int4', int4GroupSize: 128 }],
]
const MODES = process.env.QUALITY_MODES ? ALL_MODES.filter(([label]) => process.env.QUALITY_MODES.split(',').includes(label)) : ALL_MODES
// Evaluation texts (not the calibration set).
const TEXTS = [
  'The old lighthouse keeper climbed the spiral stairs every evening, counting the steps as his father had taught him, and lit the lamp before the fog rolled in from the sea.',
  'To install the package, run npm install, then import ModelRunner and call load with the path of a model folder. Errors carry a stable code and a message naming the bad value.',
  'for (let i = 0; i < items.length; i++) {\n  if (items[i].price > 100) discounted.push({ ...items[i], price: items[i].price * 0.9 })\n}\nconsole.log(discounted.length)',
  '北京是中国的首都，有三千多年的历史。长城、故宫和天坛每年吸引数以百万计的游客。Paris, Berlin und Madrid sind ebenfalls beliebte Reiseziele.',
]

/** Log-softmax of each row, in float64. */
function logSoftmaxRows(x, vocab) {
  const out = new Float64Array(x.length)
  for (let r = 0; r < x.length / vocab; r++) {
    const row = x.subarray(r * vocab, (r + 1) * vocab)
    let m = -Infinity
    for (const v of row) m = Math.max(m, v)
    let s = 0
    for (const v of row) s += Math.exp(v - m)
    const lse = m + Math.log(s)
    for (let j = 0; j < vocab; j++) out[r * vocab + j] = row[j] - lse
  }
  return out
}

/** Metrics of log-probabilities `got` against `ref` (both [positions, vocab]). */
function compare(ref, got, vocab) {
  let num = 0
  let den = 0
  let kl = 0
  let agree = 0
  const rows = ref.length / vocab
  for (let r = 0; r < rows; r++) {
    const o = r * vocab
    let ma = 0
    let mb = 0
    for (let j = 0; j < vocab; j++) {
      ma += ref[o + j]
      mb += got[o + j]
    }
    ma /= vocab
    mb /= vocab
    let best = [0, -Infinity]
    let bestGot = [0, -Infinity]
    for (let j = 0; j < vocab; j++) {
      const a = ref[o + j] - ma
      const b = got[o + j] - mb
      num += (a - b) ** 2
      den += a * a
      const p = Math.exp(ref[o + j])
      if (p > 0) kl += p * (ref[o + j] - got[o + j])
      if (ref[o + j] > best[1]) best = [j, ref[o + j]]
      if (got[o + j] > bestGot[1]) bestGot = [j, got[o + j]]
    }
    if (best[0] === bestGot[0]) agree++
  }
  return { relL2: Math.sqrt(num / den), meanKl: Math.max(0, kl / rows), top1: agree / rows }
}

async function ours(model, label, accelerationConfig, prompts) {
  const runner = await ModelRunner.load({ modelName: model, accelerationConfig, onLoadProgress: false })
  const info = runner.getModelInfo()
  const vocab = info.vocabSize
  const parts = []
  for (const ids of prompts) parts.push(await runner.computeLogits(ids, { allPositions: true }))
  const logits = new Float32Array(parts.reduce((s, p) => s + p.length, 0))
  let at = 0
  for (const p of parts) {
    logits.set(p, at)
    at += p.length
  }
  const row = { engine: 'ours', mode: label, weights: info.dtype, weightBytes: runner.estimateMemoryUsage().weightBytes, loadS: info.loadTimeMs / 1000 }
  await runner.dispose()
  return { row, logp: logSoftmaxRows(logits, vocab), vocab }
}

async function exportGguf(model, accelerationConfig, file, env = {}) {
  if (existsSync(file)) return file
  const saved = { ...process.env }
  Object.assign(process.env, env)
  try {
    const runner = await ModelRunner.load({ modelName: model, accelerationConfig, onLoadProgress: false })
    await runner.export(file)
    await runner.dispose()
  } finally {
    for (const k of Object.keys(env)) if (saved[k] === undefined) delete process.env[k]
  }
  return file
}

function llama(gguf, promptsFile, vocab, tmp) {
  const out = join(tmp, 'llama.bin')
  const meta = JSON.parse(
    execFileSync(process.execPath, [join(here, 'quality-llama.mjs'), '--gguf', gguf, '--prompts', promptsFile, '--out', out], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
    })
      .trim()
      .split('\n')
      .at(-1),
  )
  if (meta.vocab !== vocab) throw new Error(`vocab ${meta.vocab} != ${vocab}`)
  const lp = new Float32Array(readFileSync(out).buffer.slice(0))
  rmSync(out)
  return { logp: Float64Array.from(lp), loadS: meta.loadMs / 1000 }
}

const results = []
for (const name of which) {
  const model = name === 'tiny' ? join(root, 'fixtures', 'qwen3-tiny') : makeSyntheticCheckpoint()
  const maxTokens = name === 'tiny' ? 48 : 32
  const tmp = mkdtempSync(join(tmpdir(), 'nano-qwen3-quality-'))
  const ggufDir = name === 'tiny' ? tmp : dirname(model)
  const stem = model.split('/').at(-1)
  console.error(`[${name}] reference: ours, none ...`)
  const probe = await ModelRunner.load({ modelName: model, onLoadProgress: false })
  const prompts = TEXTS.map((t) => probe.tokenize(t).slice(0, maxTokens))
  await probe.dispose()
  const promptsFile = join(tmp, 'prompts.json')
  writeFileSync(promptsFile, JSON.stringify(prompts))
  const ref = await ours(model, 'none', { quantization: 'none' }, prompts)
  const rows = []
  for (const [mode, config] of MODES) {
    console.error(`[${name}] ours, ${mode} ...`)
    const r = await ours(model, mode, config, prompts)
    rows.push({ ...r.row, ...compare(ref.logp, r.logp, ref.vocab) })
  }
  if (withPeer) {
    const bf16 = await exportGguf(model, { quantization: 'none' }, join(ggufDir, `${stem}-BF16.gguf`))
    console.error(`[${name}] llama.cpp BF16 (its reference) ...`)
    const lref = llama(bf16, promptsFile, ref.vocab, tmp)
    rows.push({ engine: 'llama.cpp', mode: 'BF16 vs our none', weights: 'bf16', ...compare(ref.logp, lref.logp, ref.vocab), weightBytes: rows.find((r) => r.mode === 'bf16')?.weightBytes, loadS: lref.loadS })
    // The exported tensors have our block layouts byte for byte, so their weight bytes are ours.
    const bytesOf = (mode) => rows.find((r) => r.mode === mode)?.weightBytes
    const peers = [
      // Q8_0: our dynamic_int8 export is llama.cpp's Q8_0 rule (abs-max / 127, round half away).
      ['Q8_0', 'dynamic_int8', await exportGguf(model, { quantization: 'dynamic_int8' }, join(ggufDir, `${stem}-Q8_0.gguf`))],
      ['Q4_0 (llama.cpp rule)', 'int4', await exportGguf(model, { quantization: 'int4', calibration: { smoothing: 0 } }, join(ggufDir, `${stem}-Q4_0-llama-rule.gguf`), { NANO_QWEN3_Q4_SCALES: 'absmax' })],
      ['Q4_0 (our int4 scales)', 'int4', await exportGguf(model, { quantization: 'int4' }, join(ggufDir, `${stem}-Q4_0.gguf`))],
    ]
    for (const [label, mode, file] of peers) {
      console.error(`[${name}] llama.cpp ${label} ...`)
      const l = llama(file, promptsFile, ref.vocab, tmp)
      rows.push({ engine: 'llama.cpp', mode: label, weights: label.slice(0, 4).toLowerCase(), ...compare(lref.logp, l.logp, ref.vocab), weightBytes: bytesOf(mode), loadS: l.loadS })
    }
  }
  rmSync(tmp, { recursive: true, force: true })
  results.push({ model: name, positions: prompts.reduce((s, p) => s + p.length, 0), rows })
}

const mb = (b) => (b === undefined ? '-' : (b / 2 ** 20).toFixed(1))
for (const { model, positions, rows } of results) {
  console.log(`\n${model === 'tiny' ? 'Tiny fixture (fixtures/qwen3-tiny)' : 'Qwen3-0.6B shapes (synthetic random weights)'}: ${positions} positions`)
  console.log('| engine | mode | weights | weight MB | load s | rel. logit error | mean KL | top-1 agreement |')
  console.log('|---|---|---|---|---|---|---|---|')
  for (const r of rows) {
    console.log(
      `| ${r.engine} | ${r.mode} | ${r.weights} | ${mb(r.weightBytes)} | ${r.loadS.toFixed(2)} | ${r.relL2.toExponential(2)} | ${r.meanKl.toExponential(2)} | ${(100 * r.top1).toFixed(1)}% |`,
    )
  }
}
mkdirSync(join(here, 'results'), { recursive: true })
writeFileSync(join(here, 'results', 'quality.json'), JSON.stringify({ date: new Date().toISOString(), results }, null, 2))
