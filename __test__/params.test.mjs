// Every generation parameter, alone, reaches the engine and does what it says: a table with one row
// per key of the schema, so a new key without a path to the engine (or without a test) fails here.
import test from 'ava'
import { createAccelerationConfig, generationParamsSchema, ModelAccelerator, ModelRunner, NanoQwenError } from '../dist/index.mjs'
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

test('every grammar type reaches the engine and constrains the text', async (t) => {
  const cases = [
    [{ type: 'json_schema', schema: { type: 'integer' } }, /^-?[0-9]+$/],
    [{ type: 'json_object' }, /^\{/],
    [{ type: 'lark', grammar: 'start: "yes" | "no"' }, /^(yes|no)$/],
    [{ type: 'regex', pattern: 'ab+' }, /^ab+$/],
  ]
  for (const [grammar, pattern] of cases) t.regex((await gen({ maxTokens: 8, grammar })).text, pattern, grammar.type)
  await t.throwsAsync(gen({ grammar: { type: 'ebnf', grammar: 'x' } }), { code: 'INVALID_ARGUMENT', message: /params\.grammar\.type/ })
})

test('logitBias keys are whole token ids', async (t) => {
  for (const key of ['12a', 'a12', '-1', '1.5']) {
    await t.throwsAsync(gen({ logitBias: { [key]: 1 } }), { code: 'INVALID_ARGUMENT', message: /a token id/ }, key)
  }
})

test('several problems are reported together, each named', async (t) => {
  const e = await t.throwsAsync(gen({ temperature: 'hot', topP: 'high', maxTokenz: 1, minQ: 2 }), { code: 'INVALID_ARGUMENT' })
  t.regex(e.message, /unknown option\(s\) "maxTokenz", "minQ"/)
  t.regex(e.message, /params\.temperature = "hot": [^;]+; params\.topP = "high"/)
})

// The acceleration config: each default pinned, each snake_case name mapped, the calibration
// strength's bounds, and the accelerator's plan.
test('createAccelerationConfig fills in every default', (t) => {
  t.deepEqual(
    { ...createAccelerationConfig() },
    {
      quantization: 'none',
      useFlashAttention: true,
      useTorchCompile: false,
      compileMode: 'default',
      useChannelsLast: true,
      useGradientCheckpointing: false,
      useFusedKernels: true,
      kvCacheDtype: 'f32',
      int4GroupSize: 32,
      int4LmHead: 'q8_0',
    },
  )
  t.true(Object.isFrozen(createAccelerationConfig()))
  t.throws(() => createAccelerationConfig({ quantization: 'int3' }), { instanceOf: NanoQwenError, code: 'INVALID_CONFIG', message: /^invalid accelerationConfig\.quantization = "int3"/ })
})

test('the Python API\'s snake_case names set their camelCase options', (t) => {
  const cases = {
    use_flash_attention: ['useFlashAttention', false],
    use_torch_compile: ['useTorchCompile', true],
    compile_mode: ['compileMode', 'max-autotune'],
    use_channels_last: ['useChannelsLast', false],
    use_gradient_checkpointing: ['useGradientCheckpointing', true],
    use_fused_kernels: ['useFusedKernels', false],
    kv_cache_dtype: ['kvCacheDtype', 'bf16'],
    int4_group_size: ['int4GroupSize', 128],
    int4_lm_head: ['int4LmHead', 'q4_0'],
  }
  for (const [snake, [camel, value]] of Object.entries(cases)) t.is(createAccelerationConfig({ [snake]: value })[camel], value, snake)
})

test('calibration.smoothing accepts [0, 1] only', (t) => {
  for (const smoothing of [0, 0.35, 1]) t.is(createAccelerationConfig({ calibration: { smoothing } }).calibration.smoothing, smoothing)
  for (const smoothing of [-0.01, 1.01]) t.throws(() => createAccelerationConfig({ calibration: { smoothing } }), { message: /calibration\.smoothing/ })
})

test('ModelAccelerator keeps its config and device and plans without a model', (t) => {
  const acc = new ModelAccelerator({ quantization: 'bf16', use_fused_kernels: false }, 'cpu')
  t.is(acc.config.quantization, 'bf16')
  t.false(acc.config.useFusedKernels)
  t.is(acc.device, 'cpu')
  t.is(new ModelAccelerator().device, 'auto')
  const plan = acc.plan()
  t.is(plan.weightDtype, 'bf16')
  t.is(plan.device, 'cpu')
  t.deepEqual(acc.getAppliedOptimizations(), plan.appliedOptimizations)
  t.deepEqual(plan.appliedOptimizations, ['quantization=bf16', 'useFlashAttention=true', 'useChannelsLast=true'])
  t.true(new ModelAccelerator({ quantization: 'bf16' }, 'cpu').getAppliedOptimizations().includes('useFusedKernels=true'))
})
