// static_int8 (calibration + SmoothQuant), GGUF import through ModelRunner, and the per-class
// memory report, on the tiny fixture against the transformers reference.
import test from 'ava'
import { join } from 'node:path'
import { ModelRunner } from '../dist/index.mjs'
import { fixtureDir, reference, referenceLogits, relL2, root } from './helpers.mjs'

const greedy = { temperature: 0, ignoreEos: true }

test('static_int8: calibrated scales, logits within 5e-2 of f32 transformers, every site reported', async (t) => {
  const progress = []
  const runner = await ModelRunner.load({
    modelName: fixtureDir,
    accelerationConfig: { quantization: 'static_int8' },
    onLoadProgress: (p) => progress.push(p),
  })
  const q = runner.getModelInfo().quantization
  t.is(q.mode, 'static_int8')
  const c = q.calibration
  t.is(c.sites.length, 4 * 2 + 1) // four activation sites per layer (2 layers) + the lm_head input
  t.is(c.staticSites + c.dynamicSites.length, c.sites.length)
  for (const d of c.dynamicSites) t.regex(d, /dynamic, a typical token spans 1\/[\d.]+ of the calibrated range/)
  t.true(c.tokens > 100)
  // Calibration (two passes) and quantization showed progress, each ending at its total.
  for (const stage of ['calibrate', 'calibrate (smoothed)', 'quantize']) {
    const last = progress.filter((p) => p.stage === stage).at(-1)
    t.truthy(last, stage)
    t.is(last.done, last.total)
  }
  for (const [i, p] of reference.prompts.entries()) {
    const err = relL2(await runner.computeLogits(p.input_ids), referenceLogits(`last_logits.${i}`))
    // Same bound as dynamic_int8 (int8 weights and activations: ~1% per rounding, compounded over 2 layers).
    t.true(err < 5e-2 && err > 1e-4, `prompt ${i}: relative L2 ${err}`)
  }
  // Recalibrating on the caller's texts reloads and reports them.
  const report = await runner.calibrate(['The quick brown fox jumps over the lazy dog.', 'def f(x):\n    return x * 2'], { maxTokens: 16 })
  t.is(report.texts, 2)
  t.true(report.tokens <= 32)
  t.is((await runner.generate('Hello', { maxTokens: 4, ...greedy })).usage.completionTokens, 4)
  await runner.dispose()
})

test('a GGUF written by PyPI gguf loads through ModelRunner with the folder\'s logits', async (t) => {
  const folder = await ModelRunner.load({ modelName: fixtureDir })
  const file = await ModelRunner.load({ modelName: join(root, 'fixtures', 'gguf', 'qwen3-tiny-pypi.gguf') })
  const p = reference.prompts[0].input_ids
  const [a, b] = [await folder.computeLogits(p), await file.computeLogits(p)]
  // Same bf16 values, some stored as F32 in the file: only the kernels' summation order differs
  // (on AVX512_BF16 CPUs the bf16 matrices take vdpbf16ps, the f32 ones the AVX2 path).
  t.true(relL2(b, a) < 2e-5, `${relL2(b, a)}`)
  t.deepEqual(file.tokenize('Hello world'), folder.tokenize('Hello world'))
  const msgs = [{ role: 'user', content: 'Hi' }]
  t.is(file.applyChatTemplate(msgs), folder.applyChatTemplate(msgs))
  const formats = new Set(file.getModelInfo().quantization.tensors.map((c) => c.format))
  t.true(formats.has('bf16') && formats.has('f32'), [...formats].join())
  await Promise.all([folder.dispose(), file.dispose()])
})

test('memory report: bytes per tensor class add up to the weights, int8 and int4 within the size goals', async (t) => {
  const cases = [
    ['dynamic_int8', {}, 0.28, () => 'q8_0'],
    // The smallest int4: every matrix in Q4_0.
    ['int4', { int4LmHead: 'q4_0' }, 0.16, () => 'q4_0'],
    // The default keeps the output projection (here the tied embedding, nearly all of this tiny model) in Q8_0.
    ['int4', {}, 0.28, (c) => (c.includes('lm_head') ? 'q8_0' : 'q4_0')],
  ]
  for (const [mode, extra, maxFraction, format] of cases) {
    const runner = await ModelRunner.load({ modelName: fixtureDir, accelerationConfig: { quantization: mode, ...extra } })
    const m = runner.estimateMemoryUsage()
    t.is(m.weightsByClass.reduce((s, c) => s + c.bytes, 0), m.weightBytes)
    for (const c of m.weightsByClass.filter((c) => c.class !== 'norms')) t.is(c.format, format(c.class), `${mode} ${JSON.stringify(extra)} ${c.class}`)
    // Against the same parameters in f32 (what `none` on an f32 checkpoint holds).
    t.true(m.weightBytes / (m.baseModelSizeMb * 2 ** 20) <= maxFraction, `${mode}: ${m.weightBytes} bytes`)
    await runner.dispose()
  }
})

test('kvCacheDtype f16 halves the KV cache and keeps the logits close', async (t) => {
  const [f32, f16] = await Promise.all(
    ['f32', 'f16'].map((kvCacheDtype) => ModelRunner.load({ modelName: fixtureDir, accelerationConfig: { kvCacheDtype } })),
  )
  t.is(f16.estimateMemoryUsage().kvCacheBytesPerToken * 2, f32.estimateMemoryUsage().kvCacheBytesPerToken)
  t.regex(f16.getAccelerationInfo().items.find((i) => i.option === 'useFlashAttention').detail, /KV cache in f16/)
  const p = reference.prompts[0].input_ids
  const err = relL2(await f16.computeLogits(p), await f32.computeLogits(p))
  t.true(err < 2e-3 && err > 0, `relative L2 ${err}`)
  await Promise.all([f32.dispose(), f16.dispose()])
})

test('int4 weights prepared at load are cached on disk: the second load reads them, same logits', async (t) => {
  // Calibration texts of its own: a key no other test in this file (and cache directory) loads.
  const calibration = { texts: ['The weight cache test calibrates on this sentence, and on nothing else.'] }
  const opts = { modelName: fixtureDir, accelerationConfig: { quantization: 'int4', calibration }, onLoadProgress: false }
  const first = await ModelRunner.load(opts)
  const second = await ModelRunner.load(opts)
  t.is(first.getModelInfo().weightCache.status, 'written')
  t.like(second.getModelInfo().weightCache, { status: 'hit', path: first.getModelInfo().weightCache.path, error: null })
  t.true(second.getModelInfo().weightCache.path.startsWith(process.env.NANO_QWEN3_WEIGHT_CACHE_DIR))
  const ids = reference.prompts[0].input_ids
  t.deepEqual(Array.from(await second.computeLogits(ids)), Array.from(await first.computeLogits(ids)))
  const off = await ModelRunner.load({ ...opts, weightCache: false })
  t.is(off.getModelInfo().weightCache.status, 'off')
  const plain = await ModelRunner.load({ modelName: fixtureDir, onLoadProgress: false })
  t.is(plain.getModelInfo().weightCache.status, 'not used')
  await Promise.all([first.dispose(), second.dispose(), off.dispose(), plain.dispose()])
})
