// Greedy continuations on a real model, this engine against llama.cpp (node-llama-cpp) on the same
// GGUF file: for each prompt (code completions and chats), how many of the 64 tokens agree before
// the first divergence (both stop at end-of-sequence), and at a divergence both engines' log-probabilities of the two candidates
// (a near-tie in ours: the two tokens within a small margin, where rounding order decides).
//   node bench/real-greedy.mjs [--model 0.5b|1.5b|FILE] [--tokens 64] [--quantization none]
// Writes bench/results/real-greedy-<model>.json.
import { mkdirSync, writeFileSync } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { getLlama } from 'node-llama-cpp'
import { ModelRunner } from '../dist/index.mjs'
import { REAL_MODELS, realModel } from './real-models.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const { values: o } = parseArgs({
  options: { model: { type: 'string', default: '0.5b' }, tokens: { type: 'string', default: '64' }, quantization: { type: 'string', default: 'none' } },
})
const file = REAL_MODELS[o.model] ? realModel(o.model) : o.model
const n = Number(o.tokens)

const CODE = [
  'def quicksort(items):\n    """Sort a list with quicksort and return a new list."""\n',
  'import json\nfrom pathlib import Path\n\n\ndef load_config(path: Path) -> dict:\n',
  '// Debounce: call `fn` only after `ms` milliseconds without another call.\nfunction debounce(fn, ms) {\n',
  '#include <stdio.h>\n\n/* Print the first n Fibonacci numbers. */\nint main(void) {\n',
]
const CHATS = [
  'Write a Python function that checks whether a number is prime.',
  'Explain the difference between a list and a tuple in Python in two sentences.',
  'How do I read a file line by line in Node.js?',
  'Write a SQL query that returns the ten customers with the highest total order value.',
]

const runner = await ModelRunner.load({ modelName: file, accelerationConfig: { quantization: o.quantization }, onLoadProgress: false })
const prompts = [
  ...CODE.map((text) => ({ kind: 'code', text, ids: runner.tokenize(text) })),
  ...CHATS.map((q) => {
    const text = runner.applyChatTemplate([{ role: 'user', content: q }], { addGenerationPrompt: true })
    return { kind: 'chat', text: q, ids: runner.tokenize(text) }
  }),
]
const llama = await getLlama({ gpu: false, logLevel: 'error' })
const model = await llama.loadModel({ modelPath: file, gpuLayers: 0 })
const context = await model.createContext({ contextSize: 512, threads: 2 })
const seq = context.getSequence()

function logSoftmax(row) {
  let m = -Infinity
  for (const v of row) m = Math.max(m, v)
  let s = 0
  for (const v of row) s += Math.exp(v - m)
  const lse = m + Math.log(s)
  return (i) => row[i] - lse
}

const rows = []
for (const p of prompts) {
  // Both stop at the end-of-sequence token (node-llama-cpp's evaluate ends there without yielding it).
  const ours = (await runner.generate(p.ids, { maxTokens: n, temperature: 0 })).tokenIds
  await seq.clearHistory()
  const theirs = []
  for await (const t of seq.evaluate(p.ids, { temperature: 0 })) {
    theirs.push(t)
    if (theirs.length >= n) break
  }
  let same = 0
  while (same < Math.min(ours.length, theirs.length) && ours[same] === theirs[same]) same++
  const length = Math.max(ours.length, theirs.length)
  const row = { kind: p.kind, prompt: p.text.split('\n')[0].slice(0, 60), promptTokens: p.ids.length, agreeing: same, of: length }
  if (same < length) {
    // Both engines' view of the position where they part: log-probabilities of the two picks.
    const prefix = [...p.ids, ...ours.slice(0, same)]
    const lp = logSoftmax(await runner.computeLogits(prefix))
    await seq.clearHistory()
    const next = { probabilities: true, options: { temperature: 1, topK: 0, topP: 1, minP: 0 } }
    const res = await seq.controlledEvaluate(prefix.map((t, i) => (i === prefix.length - 1 ? [t, { generateNext: next }] : t)))
    const probs = res.at(-1).next.probabilities
    // A side that ended picked an end-of-sequence token: the one we rank highest.
    const eos = runner.getModelInfo().eosTokenIds.reduce((x, y) => (lp(y) > lp(x) ? y : x))
    const [a, b] = [ours[same] ?? eos, theirs[same] ?? eos]
    row.divergence = {
      ours: { token: a, text: runner.detokenize([a]), ourLogProb: lp(a), llamaLogProb: Math.log(probs.get(a) ?? 0) },
      llama: { token: b, text: runner.detokenize([b]), ourLogProb: lp(b), llamaLogProb: Math.log(probs.get(b) ?? 0) },
      ourMargin: lp(a) - lp(b),
      llamaMargin: Math.log(probs.get(b) ?? 0) - Math.log(probs.get(a) ?? 0),
    }
  }
  rows.push(row)
  console.error(`${p.kind} ${JSON.stringify(row.prompt)}: ${same}/${n} agree${row.divergence ? `, our margin ${row.divergence.ourMargin.toFixed(3)}` : ''}`)
}
await context.dispose()
await model.dispose()
await runner.dispose()

const NEAR_TIE = 0.1
console.log(`\n${basename(file)}, ours (${o.quantization}) against llama.cpp on the same file, greedy, ${n} tokens\n`)
console.log('| prompt | kind | tokens agreeing | at the divergence: ours / llama.cpp | our log-prob margin | llama.cpp margin | near-tie |')
console.log('|---|---|---|---|---|---|---|')
for (const r of rows) {
  const d = r.divergence
  const picks = d ? `${JSON.stringify(d.ours.text)} / ${JSON.stringify(d.llama.text)}` : '-'
  const tie = d ? (Math.abs(d.ourMargin) < NEAR_TIE ? 'yes' : 'no') : '-'
  console.log(`| ${JSON.stringify(r.prompt)} | ${r.kind} | ${r.agreeing} / ${r.of} | ${picks} | ${d ? d.ourMargin.toFixed(3) : '-'} | ${d ? d.llamaMargin.toFixed(3) : '-'} | ${tie} |`)
}
const total = rows.reduce((s, r) => s + r.agreeing, 0)
console.log(`\n${total} / ${rows.reduce((s, r) => s + r.of, 0)} tokens before the first divergence; ${rows.filter((r) => !r.divergence).length} of ${rows.length} continuations identical; near-tie: our top-2 log-probabilities within ${NEAR_TIE}`)
mkdirSync(join(here, 'results'), { recursive: true })
writeFileSync(join(here, 'results', `real-greedy-${basename(file, '.gguf')}.json`), JSON.stringify({ date: new Date().toISOString(), file: basename(file), quantization: o.quantization, rows }, null, 2))
