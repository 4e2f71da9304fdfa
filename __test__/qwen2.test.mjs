// Qwen2 / Qwen2.5 (the `qwen2` architecture: q/k/v biases, no q/k norm) against llama.cpp
// (node-llama-cpp) on the same files: a tiny random model written by llama.cpp's own gguf-py in every
// common GGUF type (fixtures/qwen2-tiny, scripts/test-data/write_qwen2_fixtures.py), and the same
// weights as a Hugging Face folder.
import test from 'ava'
import { join } from 'node:path'
import { getLlama } from 'node-llama-cpp'
import { ModelRunner } from '../dist/index.mjs'
import { logSoftmax, root } from './helpers.mjs'
import { scratchDir } from './scratch.mjs'

const dir = join(root, 'fixtures', 'qwen2-tiny')
const llama = getLlama({ gpu: false, logLevel: 'error' })
// Token ids of the tiny vocabulary (512), fixed so the comparisons are reproducible.
const prompts = [
  [10, 200, 33, 401, 77, 5, 300, 250, 12, 499, 64, 128],
  [509, 7, 7, 7, 91, 340, 22, 180, 455, 3, 266, 71, 102, 8, 390, 45, 17, 222],
  [300, 41, 129, 480],
]

/** llama.cpp's log-probabilities after each token of `ids` (teacher-forced), as Maps id -> p. */
async function llamaLogProbs(file, ids) {
  const model = await (await llama).loadModel({ modelPath: file })
  const context = await model.createContext({ contextSize: 128, threads: 2 })
  const next = { probabilities: true, options: { temperature: 1, topK: 0, topP: 1, minP: 0 } }
  const res = await context.getSequence().controlledEvaluate(ids.map((t) => [t, { generateNext: next }]))
  await context.dispose()
  await model.dispose()
  return res.map((r) => r.next.probabilities)
}

/**
 * Our greedy continuation of each prompt, then both engines teacher-forced over prompt +
 * continuation: every likely token's log-probability within `bound`, and llama.cpp's greedy pick
 * equal to ours wherever our margin is clear (> 2 bound, so a near-tie may go either way).
 */
async function compareWithLlama(t, runner, file, bound) {
  const vocab = runner.getModelInfo().vocabSize
  let decided = 0
  let maxDiff = 0
  for (const prompt of prompts) {
    const ours = await runner.generate(prompt, { maxTokens: 8, temperature: 0, ignoreEos: true })
    const ids = [...prompt, ...ours.tokenIds]
    const theirs = await llamaLogProbs(file, ids)
    const logits = await runner.computeLogits(ids, { allPositions: true })
    for (let pos = 0; pos < ids.length - 1; pos++) {
      const lp = logSoftmax(logits.subarray(pos * vocab, (pos + 1) * vocab))
      for (const [id, p] of theirs[pos]) {
        if (p < 1e-3) continue
        const d = Math.abs(lp[id] - Math.log(p))
        maxDiff = Math.max(maxDiff, d)
        if (d > bound) t.fail(`${file}: position ${pos}, token ${id}: log-prob ${lp[id]} vs llama.cpp ${Math.log(p)}`)
      }
      const order = lp.map((v, i) => [v, i]).sort((a, b) => b[0] - a[0])
      if (pos >= prompt.length - 1 && order[0][0] - order[1][0] > 2 * bound) {
        const theirsTop = [...theirs[pos].entries()].reduce((a, b) => (b[1] > a[1] ? b : a))[0]
        t.is(theirsTop, ids[pos + 1], `${file}: greedy token at position ${pos}`)
        decided++
      }
    }
  }
  t.log(`${file.split('/').pop()}: largest log-prob difference ${maxDiff.toFixed(4)} (bound ${bound}); ${decided} clear greedy decisions, all equal`)
  return decided
}

// Bounds: llama.cpp runs F16 matrices on f16-rounded activations, Q8_0 / Q4_0 / Q4_1 / Q5_x on
// activations rounded to 8-bit blocks of 32, and k-quants on Q8_K activations (blocks of 256); we
// run the same blocks as stored on int8 activations of our own (blocks of 32 for Q8_0 ... Q5_1,
// 256 for the k-quants), and dequantize Q2_K / Q3_K to f32. Measured maxima (12-token prompt):
// F16 0.0035, Q8_0 0.041, Q4_0 0.036, Q4_1 0.044, Q5_0 0.043, Q5_1 0.046, Q2_K 0.107, Q3_K 0.106,
// Q4_K 0.082, Q5_K 0.090, Q6_K 0.099. A misread scale or bit plane moves log-probabilities by whole
// units on these weights.
const types = {
  F16: { bound: 0.005, dtype: 'f16' },
  Q8_0: { bound: 0.08, dtype: 'q8_0' },
  Q4_0: { bound: 0.08, dtype: 'q4_0' },
  Q4_1: { bound: 0.08, dtype: 'q4_1' },
  Q5_0: { bound: 0.08, dtype: 'q5_0' },
  Q5_1: { bound: 0.08, dtype: 'q5_1' },
  Q2_K: { bound: 0.2, dtype: 'f32' },
  Q3_K: { bound: 0.2, dtype: 'f32' },
  Q4_K: { bound: 0.2, dtype: 'q4_k' },
  Q5_K: { bound: 0.2, dtype: 'q5_k' },
  Q6_K: { bound: 0.2, dtype: 'q6_k' },
}

for (const [type, { bound, dtype }] of Object.entries(types)) {
  test(`qwen2 ${type} GGUF: llama.cpp's log-probabilities and greedy tokens on the same file`, async (t) => {
    const file = join(dir, `tiny-${type}.gguf`)
    const runner = await ModelRunner.load({ modelName: file, onLoadProgress: false })
    const info = runner.getModelInfo()
    t.is(info.architecture, 'Qwen2ForCausalLM')
    t.is(info.dtype, dtype, 'run as stored (f16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k) or dequantized to f32 at load (q2_k, q3_k)')
    t.true((await compareWithLlama(t, runner, file, bound)) >= 4)
    await runner.dispose()
  })
}

test('qwen2 Hugging Face folder: the F16 GGUF\'s logits, and llama.cpp\'s on that file', async (t) => {
  const folder = await ModelRunner.load({ modelName: dir, onLoadProgress: false })
  const gguf = await ModelRunner.load({ modelName: join(dir, 'tiny-F16.gguf'), onLoadProgress: false })
  const a = folder.getModelInfo()
  const b = gguf.getModelInfo()
  for (const k of ['architecture', 'numParameters', 'vocabSize', 'hiddenSize', 'numLayers', 'numKeyValueHeads', 'headDim', 'tieWordEmbeddings']) {
    t.deepEqual(a[k], b[k], k)
  }
  for (const p of prompts) {
    const [x, y] = [await folder.computeLogits(p), await gguf.computeLogits(p)]
    // The same f16 values from both files, through the same kernels.
    t.deepEqual(Array.from(x), Array.from(y))
  }
  t.true((await compareWithLlama(t, folder, join(dir, 'tiny-F16.gguf'), types.F16.bound)) >= 4)
  await Promise.all([folder.dispose(), gguf.dispose()])
})

test('qwen2 export: llama.cpp runs our Q8_0 file (biases, no q/k norm) to our logits', async (t) => {
  const runner = await ModelRunner.load({ modelName: dir, accelerationConfig: { quantization: 'dynamic_int8' }, onLoadProgress: false })
  const file = join(scratchDir('nq3-qwen2-'), 'tiny-q8.gguf')
  await runner.export(file)
  const back = await ModelRunner.load({ modelName: file, onLoadProgress: false })
  t.is(back.getModelInfo().architecture, 'Qwen2ForCausalLM')
  t.deepEqual(Array.from(await back.computeLogits(prompts[0])), Array.from(await runner.computeLogits(prompts[0])))
  t.true((await compareWithLlama(t, back, file, types.Q8_0.bound)) >= 4)
  await Promise.all([runner.dispose(), back.dispose()])
})
