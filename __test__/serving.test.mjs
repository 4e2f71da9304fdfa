// Serving through the runner: concurrent calls share one batch (more of them than libuv has
// threads), the prefix cache shows in usage.cachedTokens, the pool is reported, and the serving
// load options are validated.
import test from 'ava'
import { ModelRunner } from '../dist/index.mjs'
import { fixtureDir, reference } from './helpers.mjs'

const greedy = { temperature: 0, ignoreEos: true }
// 2 layers x K,V x 2 KV heads x head_dim 32 x 4 bytes x 16 tokens (f32 cache).
const BLOCK_BYTES = 2 * 2 * 2 * 32 * 4 * 16

/** A distinct prompt of n token ids per seed. */
const prompt = (seed, n) => Array.from({ length: n }, (_, i) => 200 + ((seed * 7919 + i * 104729) % 20000))

test('32 concurrent generate calls share steps and each gives its tokens alone', async (t) => {
  const runner = await ModelRunner.load({ modelName: fixtureDir, threads: 2, enablePrefixCaching: false })
  const prompts = Array.from({ length: 32 }, (_, i) => prompt(i, 5 + i))
  const alone = []
  for (const p of prompts) alone.push((await runner.generate(p, { ...greedy, maxTokens: 8 })).tokenIds)
  const before = runner.getModelInfo().serving.steps
  // More requests than libuv's 4 worker threads: none of them may hold one while it waits.
  const outs = await Promise.all(prompts.map((p) => runner.generate(p, { ...greedy, maxTokens: 8 })))
  const steps = runner.getModelInfo().serving.steps - before
  outs.forEach((o, i) => t.deepEqual(o.tokenIds, alone[i], `request ${i}`))
  t.true(steps < (32 * 8) / 4, `${steps} steps for 32 x 8 tokens`)
  const s = runner.getModelInfo().serving
  t.is(s.blocksUsed, 0)
  t.is(s.runningSequences + s.waitingSequences, 0)
  t.false(s.prefixCaching)
  await runner.dispose()
})

test('a repeated prompt prefix comes from the cache, and usage says how much', async (t) => {
  const runner = await ModelRunner.load({ modelName: fixtureDir, threads: 2 })
  const p = prompt(7, 40)
  const cold = await runner.generate(p, { ...greedy, maxTokens: 6 })
  const warm = await runner.generate(p, { ...greedy, maxTokens: 6 })
  t.is(cold.usage.cachedTokens, 0)
  t.is(warm.usage.cachedTokens, 32) // two full blocks of 16; the last token is always computed
  t.deepEqual(warm.tokenIds, cold.tokenIds)
  const s = runner.getModelInfo().serving
  t.true(s.prefixCaching && s.prefixCacheHitTokens === 32 && s.prefixCacheHitRate > 0, JSON.stringify(s))
  t.true(s.blocksCached > 0)
  t.is(s.blockTokens, 16)
  await runner.dispose()
})

test('the KV pool is sized by kvCacheMemory, and a prompt over it is refused while others run', async (t) => {
  const runner = await ModelRunner.load({ modelName: fixtureDir, threads: 2, kvCacheMemory: 8 * BLOCK_BYTES, maxBatchTokens: 64 })
  const s = runner.getModelInfo().serving
  t.is(s.blocksTotal, 8)
  t.is(s.kvCacheBytes, 8 * BLOCK_BYTES)
  t.is(s.maxBatchTokens, 64)
  t.is(runner.estimateMemoryUsage().kvCachePoolBytes, 8 * BLOCK_BYTES)
  const running = runner.generate(prompt(1, 20), { ...greedy, maxTokens: 20 })
  await t.throwsAsync(runner.generate(prompt(2, 200), greedy), {
    code: 'CONTEXT_OVERFLOW',
    message: /prompt is 200 tokens but the KV cache pool holds 128 tokens/,
  })
  t.is((await running).usage.completionTokens, 20)
  await runner.dispose()
})

test('serving options are validated with the bad value named', async (t) => {
  await t.throwsAsync(ModelRunner.load({ modelName: fixtureDir, kvCacheMemory: 100 }), {
    code: 'INVALID_ARGUMENT',
    message: new RegExp(`kvCacheMemory = 100: at least one block of 16 tokens: ${BLOCK_BYTES} bytes`),
  })
  await t.throwsAsync(ModelRunner.load({ modelName: fixtureDir, maxBatchTokens: 0 }), { code: 'INVALID_ARGUMENT', message: /maxBatchTokens/ })
  await t.throwsAsync(ModelRunner.load({ modelName: fixtureDir, maxConcurrentSequences: 1.5 }), {
    code: 'INVALID_ARGUMENT',
    message: /maxConcurrentSequences/,
  })
  await t.throwsAsync(ModelRunner.load({ modelName: fixtureDir, enablePrefixCaching: 'yes' }), { code: 'INVALID_ARGUMENT', message: /enablePrefixCaching/ })
})

test('maxConcurrentSequences caps the batch; the rest wait and still finish', async (t) => {
  const runner = await ModelRunner.load({ modelName: fixtureDir, threads: 2, maxConcurrentSequences: 2 })
  let peak = 0
  const watch = setInterval(() => (peak = Math.max(peak, runner.getModelInfo().serving.runningSequences)), 1)
  const outs = await Promise.all(Array.from({ length: 6 }, (_, i) => runner.generate(prompt(i, 10), { ...greedy, maxTokens: 200 })))
  clearInterval(watch)
  t.true(outs.every((o) => o.usage.completionTokens === 200))
  t.true(peak <= 2 && peak >= 1, `peak ${peak}`)
  // The 4 requests past the cap waited for a running one to finish: at least one whole decode.
  const shortestDecode = Math.min(...outs.map((o) => o.timings.decodeMs))
  const waited = outs.filter((o) => o.timings.queuedMs >= shortestDecode).length
  t.true(waited >= 4, `${waited} requests queued for a whole decode (${outs.map((o) => Math.round(o.timings.queuedMs))})`)
  await runner.dispose()
})

test('the reference greedy continuations hold under concurrency with chunked prefill', async (t) => {
  // maxBatchTokens 4: every prompt is prefilled in chunks, interleaved with the others' decode.
  const runner = await ModelRunner.load({ modelName: fixtureDir, threads: 2, maxBatchTokens: 4 })
  const outs = await Promise.all(reference.prompts.map((p) => runner.generate(p.input_ids, { ...greedy, maxTokens: 24 })))
  outs.forEach((o, i) => t.deepEqual(o.tokenIds, reference.prompts[i].greedy_continuation, `prompt ${i}`))
  await runner.dispose()
})
