// GGUF export, read back by llama.cpp itself (node-llama-cpp): same tokenizer, for F16 the same
// greedy tokens, for Q8_0 the same log-probabilities (and greedy tokens away from near-ties) as this
// engine on the same file.
import test from 'ava'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { getLlama } from 'node-llama-cpp'
import { ModelRunner, NanoQwenError } from '../dist/index.mjs'
import { fixtureDir, logSoftmax, reference } from './helpers.mjs'
import { scratchDir } from './scratch.mjs'

const dir = scratchDir('nq3-gguf-')
const llama = getLlama({ gpu: false, logLevel: 'error' })

async function llamaGreedy(file, prompt, n) {
  const model = await (await llama).loadModel({ modelPath: file })
  const context = await model.createContext({ contextSize: 256, threads: 2 })
  const out = []
  for await (const token of context.getSequence().evaluate(prompt, { temperature: 0 })) {
    out.push(token)
    if (out.length >= n) break
  }
  const tokens = model.tokenize(reference.tokenizer_cases[2].text)
  await context.dispose()
  await model.dispose()
  return { out, tokens }
}

async function exportAs(quantization, extra = {}) {
  const runner = await ModelRunner.load({ modelName: fixtureDir, accelerationConfig: { quantization, ...extra } })
  const file = join(dir, `tiny-${quantization}.gguf`)
  const bytes = await runner.export(file)
  return { runner, file, bytes }
}

test('F16 export: llama.cpp loads it and generates the same greedy tokens', async (t) => {
  const { runner, file, bytes } = await exportAs('fp16')
  t.is(readFileSync(file).subarray(0, 4).toString(), 'GGUF')
  t.true(bytes > runner.estimateMemoryUsage().weightBytes)
  for (const p of reference.prompts.slice(0, 2)) {
    const ours = await runner.generate(p.input_ids, { maxTokens: 16, temperature: 0, ignoreEos: true })
    const theirs = await llamaGreedy(file, p.input_ids, 16)
    t.deepEqual(theirs.out, ours.tokenIds)
    t.deepEqual(theirs.tokens, reference.tokenizer_cases[2].ids, 'tokenizer metadata reproduces the HF tokenizer')
  }
  await runner.dispose()
})

/** llama.cpp's log-probabilities after each token of `ids` (teacher-forced), [ids.length][vocab] as Maps. */
async function llamaLogProbs(file, ids) {
  const model = await (await llama).loadModel({ modelPath: file })
  const context = await model.createContext({ contextSize: 256, threads: 2 })
  const seq = context.getSequence()
  const next = { probabilities: true, options: { temperature: 1, topK: 0, topP: 1, minP: 0 } }
  const res = await seq.controlledEvaluate(ids.map((t) => [t, { generateNext: next }]))
  const out = res.map((r) => r.next.probabilities)
  await context.dispose()
  await model.dispose()
  return out
}

test('Q8_0 export (dynamic_int8): llama.cpp and this engine run the same file to the same logits and greedy tokens', async (t) => {
  const { runner, file, bytes } = await exportAs('dynamic_int8')
  const f16 = await exportAs('fp16')
  t.true(bytes < 0.75 * f16.bytes, `Q8_0 file ${bytes} bytes vs F16 ${f16.bytes}`)
  const same = await ModelRunner.load({ modelName: file, onLoadProgress: false }) // this engine on the same file
  t.is(same.getModelInfo().dtype, 'q8_0')
  const vocab = same.getModelInfo().vocabSize
  let decided = 0
  let maxDiff = 0
  for (const p of reference.prompts) {
    const ours = await same.generate(p.input_ids, { maxTokens: 12, temperature: 0, ignoreEos: true })
    const ids = [...p.input_ids, ...ours.tokenIds]
    const theirs = await llamaLogProbs(file, ids)
    const logits = await same.computeLogits(ids, { allPositions: true })
    for (let pos = p.input_ids.length - 1; pos < ids.length - 1; pos++) {
      const lp = logSoftmax(logits.subarray(pos * vocab, (pos + 1) * vocab))
      const order = lp.map((v, i) => [v, i]).sort((a, b) => b[0] - a[0])
      // The two engines' log-probabilities agree on the likely tokens (W8A8 on the same blocks;
      // they differ only in summation order and where a rounded activation lands on a tie).
      for (const [v, i] of order.slice(0, 20)) {
        const d = Math.abs(v - Math.log(theirs[pos].get(i)))
        maxDiff = Math.max(maxDiff, d)
        t.true(d < 0.05, `prompt of ${p.input_ids.length}, position ${pos}, token ${i}: log-prob differs by ${d}`)
      }
      // Wherever the greedy choice is not a near-tie (margin above twice that bound), llama.cpp's
      // greedy token is ours. (This random model has many near-ties: margins of 0.001 occur.)
      const theirsTop = [...theirs[pos].entries()].reduce((a, b) => (b[1] > a[1] ? b : a))[0]
      if (order[0][0] - order[1][0] > 0.1) {
        t.is(theirsTop, ids[pos + 1], `position ${pos}`)
        decided++
      }
    }
  }
  t.true(decided >= 12, `only ${decided} clear greedy decisions were compared`)
  t.log(`largest log-prob difference ${maxDiff.toFixed(4)}; ${decided} clear greedy decisions, all equal`)
  await Promise.all([runner.dispose(), f16.runner.dispose(), same.dispose()])
})

test('Q4_0 export (int4): llama.cpp loads the 4-bit blocks as they are', async (t) => {
  // Every matrix in Q4_0 (this tiny model is nearly all embedding, which the default keeps in Q8_0).
  const { runner, file, bytes } = await exportAs('int4', { int4LmHead: 'q4_0' })
  const p = reference.prompts[0]
  const theirs = await llamaGreedy(file, p.input_ids, 8)
  const ours = await runner.generate(p.input_ids, { maxTokens: 8, temperature: 0, ignoreEos: true })
  t.is(theirs.out.length, 8)
  // The first token comes from the same 4-bit weights in both engines.
  t.is(theirs.out[0], ours.tokenIds[0])
  // Same tokenizer metadata in both files; the weights shrink from 16 to 4.5 bits.
  const f16 = await exportAs('fp16')
  const weightsF16 = f16.runner.estimateMemoryUsage().weightBytes
  t.true(f16.bytes - bytes > 0.6 * weightsF16, `Q4_0 ${bytes} vs F16 ${f16.bytes} bytes`)
  await Promise.all([runner.dispose(), f16.runner.dispose()])
})

test('a bad export path is a clear error and leaves no file', async (t) => {
  const runner = await ModelRunner.load({ modelName: fixtureDir })
  await t.throwsAsync(runner.export(join(dir, 'model.bin')), { instanceOf: NanoQwenError, message: /ending in \.gguf/ })
  const missing = join(dir, 'no-such-dir', 'm.gguf')
  await t.throwsAsync(runner.export(missing), { code: 'IO_ERROR' })
  t.false(existsSync(missing))
  await runner.dispose()
})
