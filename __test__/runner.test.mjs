// The ModelRunner surface: streaming, stop strings, seeds, concurrency, responsiveness, reloads,
// measured memory and benchmark figures.
import test from 'ava'
import {
  createAccelerationConfig,
  ModelAccelerator,
  ModelRunner,
  NanoQwenError,
  QuantizationType,
} from '../dist/index.mjs'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fixtureDir, reference } from './helpers.mjs'
import { scratchDir } from './scratch.mjs'

const shared = ModelRunner.load({ modelName: fixtureDir, threads: 2 })
const prompt = reference.prompts[1].input_ids
const greedy = { temperature: 0, ignoreEos: true }

test('stream yields exactly the text and tokens that generate returns', async (t) => {
  const runner = await shared
  const full = await runner.generate(prompt, { ...greedy, maxTokens: 24 })
  const s = runner.stream(prompt, { ...greedy, maxTokens: 24 })
  let text = ''
  const ids = []
  for await (const c of s) {
    text += c.text
    ids.push(...c.tokenIds)
    t.false(c.text.includes('\uFFFD'), 'no split UTF-8 character')
  }
  t.is(text, full.text)
  t.deepEqual(ids, full.tokenIds)
  t.deepEqual((await s.result).tokenIds, full.tokenIds)
})

test('stop strings end the output and are trimmed from it, also when streaming', async (t) => {
  const runner = await shared
  const full = await runner.generate(prompt, { ...greedy, maxTokens: 24 })
  // A two-character stop string whose first occurrence is well inside the text.
  const chars = [...full.text]
  let stop = ''
  let cut = -1
  for (let i = 3; i < chars.length - 2 && cut <= 0; i++) {
    stop = chars.slice(i, i + 2).join('')
    cut = full.text.indexOf(stop)
  }
  t.true(cut > 0, full.text)
  const out = await runner.generate(prompt, { ...greedy, maxTokens: 24, stop: [stop, 'never-appears'] })
  t.is(out.text, full.text.slice(0, cut))
  t.is(out.finishReason, 'stop')
  let streamed = ''
  for await (const c of runner.stream(prompt, { ...greedy, maxTokens: 24, stop })) streamed += c.text
  t.is(streamed, out.text)
})

test('stop token ids and EOS from generation_config stop generation', async (t) => {
  const runner = await shared
  const full = await runner.generate(prompt, { ...greedy, maxTokens: 24 })
  const stopAt = full.tokenIds[5]
  const out = await runner.generate(prompt, { ...greedy, maxTokens: 24, stopTokenIds: [stopAt] })
  t.deepEqual(out.tokenIds, full.tokenIds.slice(0, full.tokenIds.indexOf(stopAt)))
  t.is(out.finishReason, 'stop')
  t.deepEqual(runner.getModelInfo().eosTokenIds, [151645, 151643])
})

test('same seed, same output; sampling params change it', async (t) => {
  const runner = await shared
  const params = { maxTokens: 16, temperature: 1.2, topK: 50, topP: 0.95, minP: 0.01, seed: 42, ignoreEos: true }
  const a = await runner.generate('Hello', params)
  const b = await runner.generate('Hello', params)
  t.deepEqual(a.tokenIds, b.tokenIds)
  const seeds = new Set()
  for (const seed of [1, 2, 3, 4]) seeds.add((await runner.generate('Hello', { ...params, seed })).tokenIds.join())
  t.true(seeds.size > 1, 'different seeds give different samples')
  const penalised = await runner.generate(prompt, { ...greedy, maxTokens: 24, repetitionPenalty: 1.5, frequencyPenalty: 1, presencePenalty: 1 })
  const plain = await runner.generate(prompt, { ...greedy, maxTokens: 24 })
  t.notDeepEqual(penalised.tokenIds, plain.tokenIds)
  t.true(new Set(penalised.tokenIds).size > new Set(plain.tokenIds).size, 'penalties reduce repetition')
})

test('generation_config.json defaults apply when params are left out', async (t) => {
  const runner = await shared
  // do_sample with top_k 20: two seeded runs agree, and every token is among the top 20 logits.
  const a = await runner.generate('Hello', { maxTokens: 4, seed: 7, ignoreEos: true })
  const b = await runner.generate('Hello', { maxTokens: 4, seed: 7, ignoreEos: true })
  t.deepEqual(a.tokenIds, b.tokenIds)
  const logits = await runner.computeLogits('Hello')
  const top20 = [...logits.keys()].sort((x, y) => logits[y] - logits[x]).slice(0, 20)
  t.true(top20.includes(a.tokenIds[0]))
})

test('two concurrent generate calls on one runner both finish correctly', async (t) => {
  const runner = await shared
  const [a, b] = await Promise.all([
    runner.generate(reference.prompts[0].input_ids, { ...greedy, maxTokens: 24 }),
    runner.generate(reference.prompts[2].input_ids, { ...greedy, maxTokens: 24 }),
  ])
  t.deepEqual(a.tokenIds, reference.prompts[0].greedy_continuation)
  t.deepEqual(b.tokenIds, reference.prompts[2].greedy_continuation)
})

test('the event loop stays responsive while a model loads and generates', async (t) => {
  let ticks = 0
  const timer = setInterval(() => ticks++, 5)
  const runner = await ModelRunner.load({ modelName: fixtureDir })
  const duringLoad = ticks
  clearInterval(timer)
  // Generation on a fast machine can take less than a timer period, so it is checked by order, not
  // by time: a callback queued after generate() starts runs before generate() settles. (A generate
  // that blocked the loop would settle first, in the microtask queue.)
  const order = []
  const done = runner.generate('Hello', { maxTokens: 64, ...greedy }).then(() => order.push('generate'))
  setImmediate(() => order.push('event loop'))
  await done
  await runner.dispose()
  t.true(duringLoad >= 2, `timer ran ${duringLoad} times during load`)
  t.deepEqual(order, ['event loop', 'generate'])
})

test('updateAccelerationConfig reloads, and a failed reload keeps the old model serving', async (t) => {
  const runner = await ModelRunner.load({ modelName: fixtureDir })
  t.is(runner.getModelInfo().dtype, 'bf16')
  await runner.updateAccelerationConfig(createAccelerationConfig({ quantization: 'fp16' }))
  t.is(runner.getAccelerationInfo().quantization, 'fp16')
  t.is(runner.getModelInfo().dtype, 'f16')
  await t.throwsAsync(runner.updateAccelerationConfig({ quantization: 'fp16', device: 'cuda' }), { code: 'INVALID_CONFIG' })
  await t.throwsAsync(runner.calibrate([]), { code: 'INVALID_ARGUMENT', message: /texts = \[\]/ })
  await t.throwsAsync(runner.calibrate(['Hello'], { maxTokens: -1 }), { code: 'INVALID_CONFIG', message: /maxTokens/ })
  t.is(runner.getAccelerationInfo().quantization, 'fp16')
  t.is(runner.accelerationConfig.quantization, 'fp16')
  const out = await runner.generate('Hello', { maxTokens: 4, ...greedy })
  t.is(out.usage.completionTokens, 4)
  await runner.dispose()
})

test('estimateMemoryUsage reports measured bytes of weights and KV cache', async (t) => {
  const runner = await ModelRunner.load({ modelName: fixtureDir }) // own runner: no other request's cache
  const m = runner.estimateMemoryUsage()
  const info = runner.getModelInfo()
  // bf16 checkpoint, quantization 'none': matrices stay bf16 (2 bytes), norm weights are f32 (4 bytes).
  const norms = info.numLayers * (2 * info.hiddenSize + 2 * info.headDim) + info.hiddenSize
  t.is(m.weightBytes, (info.numParameters - norms) * 2 + norms * 4)
  t.is(m.checkpointBytes, info.numParameters * 2)
  t.true(Math.abs(m.baseModelSizeMb - (info.numParameters * 4) / 2 ** 20) < 1e-9)
  t.true(m.memoryReductionPercent > 49 && m.memoryReductionPercent < 50)
  // 2 layers x K,V x 2 KV heads x head_dim 32 x 4 bytes (f32 cache).
  t.is(m.kvCacheBytesPerToken, 2 * 2 * 2 * 32 * 4)
  t.is(m.kvCacheBytesAtMaxSeqLength, m.kvCacheBytesPerToken * 4096)
  // The process's memory when the load ended: it holds at least the weights, and its peak is no lower.
  if (process.platform === 'linux') {
    t.true(m.rssAfterLoadBytes > m.weightBytes && m.peakRssAtLoadBytes >= m.rssAfterLoadBytes, JSON.stringify([m.rssAfterLoadBytes, m.peakRssAtLoadBytes]))
  } else {
    t.is(m.rssAfterLoadBytes, null)
  }
  // KV cache bytes are counted while a request runs, and released after it.
  t.is(m.kvCacheBytes, 0)
  const controller = new AbortController()
  let during = 0
  // The tiny model decodes thousands of tokens per second, so ask for nearly the whole context
  // (seconds of work) and read the counter at every chunk until the request is seen running.
  await t.throwsAsync(async () => {
    for await (const _ of runner.stream('Hello', { maxTokens: 4000, ignoreEos: true, signal: controller.signal })) {
      during = runner.estimateMemoryUsage().kvCacheBytes
      if (during > 0) controller.abort()
    }
  }, { name: 'AbortError' })
  t.true(during >= 2 * m.kvCacheBytesPerToken, `${during} bytes during generation`)
  t.is(runner.estimateMemoryUsage().kvCacheBytes, 0)
  await runner.dispose()
})

test('benchmarkPerformance measures prefill and decode separately', async (t) => {
  const runner = await shared
  const r = await runner.benchmarkPerformance({ sampleText: 'Hello, how are you?', numIterations: 3, decodeTokens: 8 })
  t.is(r.numIterations, 3)
  t.is(r.iterations, 3)
  t.is(r.decodeTokens, 8)
  // The seed guide's keys: each iteration's time, its extremes and their sum.
  t.true(r.minInferenceTime > 0 && r.minInferenceTime <= r.avgInferenceTime && r.avgInferenceTime <= r.maxInferenceTime, JSON.stringify(r))
  t.true(Math.abs(r.totalTime - 3 * r.avgInferenceTime) < 1e-9 * r.totalTime + 1e-12, `${r.totalTime} vs 3 x ${r.avgInferenceTime}`)
  t.is(r.promptTokens, runner.tokenize('Hello, how are you?').length)
  for (const s of [r.prefillTokensPerSecond, r.decodeTokensPerSecond, r.decodeTokenLatencyMs]) {
    t.true(s.min > 0 && s.min <= s.p50 && s.p50 <= s.p90 && s.p90 <= s.max, JSON.stringify(s))
  }
  t.is(r.tokensPerSecond, r.decodeTokensPerSecond.avg)
  t.deepEqual(r.appliedOptimizations, ['quantization=none', 'useFlashAttention=true', 'useFusedKernels=true', 'useChannelsLast=true'])
})

test('ModelAccelerator plans what runs and says why the rest does not', (t) => {
  const plan = new ModelAccelerator(createAccelerationConfig({ quantization: QuantizationType.BF16 }), 'cpu').plan()
  t.is(plan.computeDtype, 'f32')
  t.is(plan.weightDtype, 'bf16')
  t.deepEqual(plan.appliedOptimizations, ['quantization=bf16', 'useFlashAttention=true', 'useFusedKernels=true', 'useChannelsLast=true'])
  const flash = plan.items.find((i) => i.option === 'useFlashAttention')
  t.true(flash.applied)
  t.regex(flash.detail, /online-softmax/)
  const autotune = new ModelAccelerator({ useTorchCompile: true, compileMode: 'max-autotune' }).plan()
  t.true(autotune.appliedOptimizations.includes('useTorchCompile=true (max-autotune)'))
  const nothing = new ModelAccelerator({ useTorchCompile: true }).plan()
  t.regex(nothing.skippedOptimizations.join(), /useTorchCompile: compile mode default: nothing to plan/)
  t.regex(new ModelAccelerator({ quantization: 'static_int8' }).plan().items[0].detail, /SmoothQuant/)
  t.is(new ModelAccelerator({ quantization: 'dynamic_int8' }).plan().weightDtype, 'q8_0')
  // Python-style names are accepted.
  t.is(createAccelerationConfig({ use_flash_attention: false }).useFlashAttention, false)
})

test('max-autotune times the matmul tilings at load, caches them on disk and reuses them', async (t) => {
  const dir = scratchDir('nano-qwen3-autotune-')
  const cache = join(dir, 'autotune.json')
  process.env.NANO_QWEN3_AUTOTUNE_CACHE = cache // read by the engine at load
  const accelerationConfig = { quantization: 'int4', useTorchCompile: true, compileMode: 'max-autotune' }
  const load = () => ModelRunner.load({ modelName: fixtureDir, threads: 2, accelerationConfig, onLoadProgress: false })
  const first = await load()
  const tuned = first.getModelInfo().autotune
  t.true(tuned.shapes >= 5)
  t.is(tuned.measured, tuned.shapes)
  t.is(tuned.cacheFile, cache)
  t.is(Object.keys(JSON.parse(readFileSync(cache, 'utf8'))).length, tuned.shapes)
  const second = await load()
  t.is(second.getModelInfo().autotune.fromCache, tuned.shapes)
  t.deepEqual(second.getModelInfo().autotune.chosen, tuned.chosen)
  const a = await first.generate(prompt, { ...greedy, maxTokens: 12 })
  const b = await second.generate(prompt, { ...greedy, maxTokens: 12 })
  t.deepEqual(a.tokenIds, b.tokenIds)
  await Promise.all([first.dispose(), second.dispose()])
  delete process.env.NANO_QWEN3_AUTOTUNE_CACHE
})

test('chat and chatStream split reasoning and tool calls from the model output', async (t) => {
  const runner = await shared
  const messages = [{ role: 'user', content: 'Hello' }]
  const r = await runner.chat(messages, { ...greedy, maxTokens: 16, enableThinking: false })
  t.is(r.content, r.text) // random weights: no <think> or <tool_call> in the output
  t.is(r.reasoningContent, '')
  let content = ''
  const s = runner.chatStream(messages, { ...greedy, maxTokens: 16, enableThinking: false })
  for await (const c of s) content += c.content
  t.is(content, r.content)
  t.deepEqual((await s.result).tokenIds, r.tokenIds)
})

test('tokenize and detokenize', async (t) => {
  const runner = await shared
  t.deepEqual(runner.tokenize('<|im_start|>user'), [151644, 872])
  t.is(runner.detokenize([151644, 872], { skipSpecialTokens: true }), 'user')
  t.throws(() => runner.detokenize([1e9]), { instanceOf: NanoQwenError })
})
