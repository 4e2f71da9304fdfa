// Every generation parameter, alone, reaches the engine and does what it says: a table with one row
// per key of the schema, so a new key without a path to the engine (or without a test) fails here.
import test from 'ava'
import { generationParamsSchema, ModelRunner } from '../dist/index.mjs'
import { fixtureDir } from './helpers.mjs'

let runner
test.before(async () => {
  runner = await ModelRunner.load({ modelName: fixtureDir, threads: 2 })
})
test.after.always(() => runner?.dispose())

const prompt = 'The quick brown fox jumps over the lazy dog.'
const greedy = { temperature: 0, ignoreEos: true, maxTokens: 40 }
const gen = (p) => runner.generate(prompt, p)
const sampled = { temperature: 1, seed: 1, ignoreEos: true, maxTokens: 12 }

const checks = {
  maxTokens: async (t) => t.is((await gen({ ...greedy, maxTokens: 3 })).tokenIds.length, 3),
  temperature: async (t, base) => t.notDeepEqual((await gen({ ...greedy, temperature: 1.5, seed: 1 })).tokenIds, base.tokenIds),
  topP: async (t, base) => t.deepEqual((await gen({ ...sampled, topP: 1e-6 })).tokenIds, base.tokenIds.slice(0, 12)),
  topK: async (t, base) => t.deepEqual((await gen({ ...sampled, topK: 1 })).tokenIds, base.tokenIds.slice(0, 12)),
  minP: async (t, base) => t.deepEqual((await gen({ ...sampled, minP: 1 })).tokenIds, base.tokenIds.slice(0, 12)),
  repetitionPenalty: async (t, base) => t.notDeepEqual((await gen({ ...greedy, repetitionPenalty: 50 })).tokenIds, base.tokenIds),
  presencePenalty: async (t, base) => t.notDeepEqual((await gen({ ...greedy, presencePenalty: 2 })).tokenIds, base.tokenIds),
  frequencyPenalty: async (t, base) => t.notDeepEqual((await gen({ ...greedy, frequencyPenalty: 2 })).tokenIds, base.tokenIds),
  seed: async (t) => {
    const [a, b, c] = await Promise.all([gen(sampled), gen(sampled), gen({ ...sampled, seed: 2 })])
    t.deepEqual(a.tokenIds, b.tokenIds)
    t.notDeepEqual(a.tokenIds, c.tokenIds)
  },
  stop: async (t, base) => {
    const piece = runner.detokenize(base.tokenIds.slice(5, 7))
    const r = await gen({ ...greedy, stop: piece })
    t.is(r.finishReason, 'stop')
    t.is(r.text, base.text.slice(0, base.text.indexOf(piece)))
  },
  stopTokenIds: async (t, base) => {
    const r = await gen({ ...greedy, stopTokenIds: [base.tokenIds[4]] })
    t.is(r.finishReason, 'stop')
    t.deepEqual(r.tokenIds, base.tokenIds.slice(0, base.tokenIds.indexOf(base.tokenIds[4])))
  },
  ignoreEos: async (t) => {
    const eos = runner.getModelInfo().eosTokenIds[0]
    const bias = { logitBias: { [eos]: 100 }, temperature: 0, maxTokens: 5 }
    t.is((await gen({ ...bias, ignoreEos: false })).tokenIds.length, 0)
    t.is((await gen({ ...bias, ignoreEos: true })).tokenIds.length, 5)
  },
  logitBias: async (t) => t.deepEqual((await gen({ ...greedy, maxTokens: 4, logitBias: { 1234: 100 } })).tokenIds, [1234, 1234, 1234, 1234]),
  logprobs: async (t) => {
    const r = await gen({ ...greedy, maxTokens: 4, logprobs: 2 })
    t.is(r.logprobs.length, 4)
    t.true(r.logprobs.every((l) => l.top.length === 2))
    t.is((await gen({ ...greedy, maxTokens: 4 })).logprobs, undefined)
  },
  grammar: async (t) => t.regex((await gen({ maxTokens: 10, grammar: { type: 'regex', pattern: '[0-9]{3}' } })).text, /^[0-9]{3}$/),
  signal: async (t) => {
    const ac = new AbortController()
    ac.abort()
    await t.throwsAsync(gen({ ...greedy, signal: ac.signal }), { name: 'AbortError' })
  },
}

test('the table covers every key of the schema', (t) => {
  t.deepEqual(Object.keys(checks).sort(), Object.keys(generationParamsSchema.shape).sort())
})

test('the greedy baseline repeats tokens (so the penalties have something to change)', async (t) => {
  const base = await gen(greedy)
  t.true(new Set(base.tokenIds).size < base.tokenIds.length, JSON.stringify(base.tokenIds))
  // ...and plain sampling differs from greedy (so topP / topK / minP turning it greedy is their doing).
  t.notDeepEqual((await gen(sampled)).tokenIds, base.tokenIds.slice(0, 12))
})

for (const [key, check] of Object.entries(checks)) {
  test(`${key} alone reaches the engine`, async (t) => check(t, await gen(greedy)))
}
