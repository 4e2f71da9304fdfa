// Bad input: each gives a clear error naming the problem, and a working runner keeps working.
import test from 'ava'
import { rmSync, truncateSync, writeFileSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { createAccelerationConfig, ModelAccelerator, ModelRunner, NanoQwenError, optionValues, QuantizationType } from '../dist/index.mjs'
import { editJson, fixtureCopy, fixtureDir, readSafetensors, reference, writeSafetensors } from './helpers.mjs'

const good = ModelRunner.load({ modelName: fixtureDir, threads: 2, maxSeqLength: 64 })
const expected = reference.prompts[0].greedy_continuation.slice(0, 8)

async function stillWorks(t) {
  const out = await (await good).generate(reference.prompts[0].input_ids, { maxTokens: 8, temperature: 0, ignoreEos: true })
  t.deepEqual(out.tokenIds, expected, 'the runner still serves after the error')
}

async function loadFails(t, modelName, code, pattern, extra = {}) {
  const e = await t.throwsAsync(ModelRunner.load({ modelName, ...extra }), { instanceOf: NanoQwenError })
  t.is(e.code, code, e.message)
  t.regex(e.message, pattern)
  await stillWorks(t)
}

test('detokenize refuses what is not a list of token ids', async (t) => {
  const runner = await good
  for (const bad of [[1, undefined], [1.5], [-1], 'abc', [2 ** 32]]) {
    t.throws(() => runner.detokenize(bad), { code: 'INVALID_ARGUMENT', message: /invalid ids = .*an array of token ids/ })
  }
  t.is(typeof runner.detokenize([1, 2]), 'string')
})

test('missing folder', (t) => loadFails(t, '/nonexistent/qwen3', 'MODEL_NOT_FOUND', /\/nonexistent\/qwen3 does not exist/))

test('missing weights file and missing tokenizer', async (t) => {
  const a = fixtureCopy()
  rmSync(join(a, 'model.safetensors'))
  await loadFails(t, a, 'MODEL_NOT_FOUND', /model\.safetensors does not exist/)
  const b = fixtureCopy()
  rmSync(join(b, 'tokenizer.json'))
  await loadFails(t, b, 'MODEL_NOT_FOUND', /tokenizer\.json does not exist/)
})

test('config without a required field, and with an unknown model_type', async (t) => {
  const a = fixtureCopy()
  editJson(join(a, 'config.json'), (c) => (delete c.num_hidden_layers, c))
  await loadFails(t, a, 'INVALID_CONFIG', /num_hidden_layers/)
  const b = fixtureCopy()
  editJson(join(b, 'config.json'), (c) => ({ ...c, model_type: 'llama' }))
  await loadFails(t, b, 'INVALID_CONFIG', /model_type is "llama"; supported: "qwen3", "qwen2"/)
  const e = fixtureCopy()
  editJson(join(e, 'config.json'), (cfg) => ({ ...cfg, rms_norm_eps: 0 }))
  await loadFails(t, e, 'INVALID_CONFIG', /"rms_norm_eps" is 0; it must be a positive number/)
  const c = fixtureCopy()
  writeFileSync(join(c, 'config.json'), '{ not json')
  await loadFails(t, c, 'INVALID_CONFIG', /not valid JSON/)
})

test('truncated and corrupt safetensors', async (t) => {
  const a = fixtureCopy()
  const file = join(a, 'model.safetensors')
  truncateSync(file, statSync(file).size - 1000)
  await loadFails(t, a, 'INVALID_MODEL_FILE', /model\.safetensors: truncated safetensors file/)
  const b = fixtureCopy()
  const bytes = readFileSync(join(b, 'model.safetensors'))
  bytes.fill(0x7b, 8, 40) // garbage in the JSON header
  writeFileSync(join(b, 'model.safetensors'), bytes)
  await loadFails(t, b, 'INVALID_MODEL_FILE', /corrupt safetensors header/)
  const c = fixtureCopy()
  writeFileSync(join(c, 'model.safetensors'), Buffer.from([1, 2, 3]))
  await loadFails(t, c, 'INVALID_MODEL_FILE', /truncated/)
})

test('a tensor of the wrong shape', async (t) => {
  const dir = fixtureCopy()
  const tensors = readSafetensors(join(dir, 'model.safetensors'))
  const name = 'model.layers.1.mlp.up_proj.weight'
  const v = tensors[name]
  tensors[name] = { ...v, shape: [v.shape[0] / 2, v.shape[1]], data: v.data.subarray(0, v.data.length / 2) }
  writeSafetensors(join(dir, 'model.safetensors'), tensors)
  await loadFails(t, dir, 'INVALID_MODEL_FILE', /up_proj\.weight" has shape \[48, 32\], expected \[96, 32\]/)
})

test('a missing tensor', async (t) => {
  const dir = fixtureCopy()
  const tensors = readSafetensors(join(dir, 'model.safetensors'))
  delete tensors['model.norm.weight']
  writeSafetensors(join(dir, 'model.safetensors'), tensors)
  await loadFails(t, dir, 'INVALID_MODEL_FILE', /"model\.norm\.weight" is missing/)
})

test('a prompt longer than the context names both numbers', async (t) => {
  const runner = await good
  const long = Array(65).fill(9707)
  const e = await t.throwsAsync(runner.generate(long, { maxTokens: 4 }), { instanceOf: NanoQwenError })
  t.is(e.code, 'CONTEXT_OVERFLOW')
  t.regex(e.message, /prompt is 65 tokens but the context holds 64 tokens/)
  await t.throwsAsync(runner.computeLogits(long), { message: /65 tokens .* 64 tokens/ })
  // Text: counted exactly when it might fit; refused before encoding when no tokenization can fit
  // (10 MB against 64 tokens), so a huge prompt costs nothing.
  await t.throwsAsync(runner.generate('hello '.repeat(70)), { code: 'CONTEXT_OVERFLOW', message: /prompt is 71 tokens but the context holds 64 tokens/ })
  const huge = 'x'.repeat(10 * 2 ** 20)
  for (const call of [() => runner.generate(huge), () => runner.computeLogits(huge), () => runner.chat([{ role: 'user', content: huge }])]) {
    await t.throwsAsync(call(), { code: 'CONTEXT_OVERFLOW', message: /prompt is at least \d+ tokens \(1048\d{4} bytes\) but the context holds 64 tokens/ })
  }
  // Up to the context the generation runs, then stops with 'length'.
  const out = await runner.generate(Array(60).fill(9707), { maxTokens: 100, temperature: 0, ignoreEos: true })
  t.is(out.usage.completionTokens, 4)
  t.is(out.finishReason, 'length')
  await stillWorks(t)
})

test('invalid sampling params', async (t) => {
  const runner = await good
  const cases = [
    [{ temperature: -1 }, /temperature = -1: a number >= 0/],
    [{ topP: 1.5 }, /topP = 1\.5: 0 < topP <= 1/],
    [{ topP: 0 }, /topP = 0/],
    [{ maxTokens: 0 }, /maxTokens = 0: an integer >= 1/],
    [{ maxTokens: 2.5 }, /maxTokens = 2\.5/],
    [{ topK: -3 }, /topK = -3/],
    [{ minP: 2 }, /minP = 2/],
    [{ repetitionPenalty: 0 }, /repetitionPenalty = 0/],
    [{ stop: [''] }, /stop/],
    [{ temperature: 'hot' }, /params\.temperature = "hot"/],
    [{ temperature: Infinity }, /params\.temperature = Infinity: a finite number/],
    [{ seed: -Infinity }, /params\.seed = -Infinity: a finite number/],
    [{ logitBias: { 5: Infinity } }, /params\.logitBias\.5 = Infinity: a finite number/],
    [{ maxTokenz: 5 }, /unknown option\(s\) "maxTokenz"/],
  ]
  for (const [params, pattern] of cases) {
    const e = await t.throwsAsync(runner.generate('Hello', params), { instanceOf: NanoQwenError }, JSON.stringify(params))
    t.true(['INVALID_ARGUMENT'].includes(e.code), e.code)
    t.regex(e.message, pattern)
  }
  await t.throwsAsync(runner.generate([999999999]), { message: /token id = 999999999/ })
  await stillWorks(t)
})

test('unknown quantization, bad calibration input, unavailable device', async (t) => {
  t.throws(() => createAccelerationConfig({ quantization: 'int3' }), {
    instanceOf: NanoQwenError,
    message: /quantization = "int3": allowed "none", "fp32", "fp16", "bf16", "dynamic_int8", "static_int8", "int4"/,
  })
  t.throws(() => createAccelerationConfig({ useFlashAtention: true }), { message: /unknown option\(s\) "useFlashAtention"/ })
  t.throws(() => createAccelerationConfig({ compileMode: 'fast' }), { message: /compileMode = "fast"/ })
  // Calibration input that cannot work is refused before anything loads, naming the bad value.
  t.throws(() => createAccelerationConfig({ quantization: 'static_int8', calibration: { texts: [] } }), {
    code: 'INVALID_CONFIG',
    message: /calibration\.texts.*at least one text/,
  })
  t.throws(() => createAccelerationConfig({ calibration: { texts: ['ok', ''] } }), { message: /calibration\.texts\.1.*non-empty/ })
  t.throws(() => createAccelerationConfig({ calibration: { maxTokens: 0 } }), { message: /calibration\.maxTokens/ })
  // CUDA: no backend in this build; the error names 'gpu' as the way to an NVIDIA card today.
  for (const device of ['cuda', 'cuda:1']) {
    const d = await t.throwsAsync(ModelRunner.load({ modelName: fixtureDir, device }))
    t.is(d.code, 'UNSUPPORTED')
    t.regex(d.message, new RegExp(`device "${device}" is not available.*use device "gpu".*available devices: auto, cpu, gpu, gpu:N, vulkan, metal, dx12`))
  }
  for (const device of ['tpu', 'gpu:', 'gpu:x', 'GPU', 'cuda:']) {
    const bad = await t.throwsAsync(ModelRunner.load({ modelName: fixtureDir, device }))
    t.is(bad.code, 'INVALID_ARGUMENT')
    t.is(bad.message, `invalid options.device = "${device}": allowed: auto, cpu, gpu, gpu:N, vulkan, metal, dx12`)
  }
  t.throws(() => new ModelAccelerator({}, 'gpu:-1'), { code: 'INVALID_ARGUMENT', message: /device = "gpu:-1": allowed: auto, cpu, gpu, gpu:N/ })
  await stillWorks(t)
})

test('chat input: unknown roles, non-text content, tool calls and tools that are not objects', async (t) => {
  const runner = await good
  const user = { role: 'user', content: 'Hi' }
  const cases = [
    [[{ role: 'robot', content: 'Hi' }], {}, /chat\.messages\.0\.role = "robot": allowed "system", "user", "assistant", "tool"/],
    [[user, { role: 'assistant', content: 42 }], {}, /chat\.messages\.1\.content = 42: Expected string, received number/],
    [[{ role: 'user' }], {}, /chat\.messages\.0\.content = undefined: Required/],
    [[], {}, /chat\.messages = \[\]: at least one message/],
    [[user, { role: 'assistant', content: '', tool_calls: [{ function: { name: 'f', arguments: '{}' } }] }], {}, /tool_calls\.0\.function\.arguments = "\{\}": Expected object/],
    [[user], { tools: ['search'] }, /chat\.tools\.0 = "search": Expected object, received string/],
    [[user], { tools: [[1]] }, /chat\.tools\.0 = \[1\]: Expected object, received array/],
  ]
  for (const [messages, opts, pattern] of cases) {
    t.throws(() => runner.applyChatTemplate(messages, opts), { code: 'INVALID_ARGUMENT', message: pattern }, JSON.stringify(messages))
    await t.throwsAsync(runner.chat(messages, opts), { code: 'INVALID_ARGUMENT', message: pattern })
  }
  t.regex(runner.applyChatTemplate([user], { tools: [{ type: 'function', function: { name: 'f' } }] }), /"name": "f"/)
  await stillWorks(t)
})

test('an aborted generation rejects with AbortError and the runner goes on', async (t) => {
  const runner = await good
  const controller = new AbortController()
  controller.abort()
  await t.throwsAsync(runner.generate('Hello', { signal: controller.signal }), { name: 'AbortError' })
  const c2 = new AbortController()
  const s = runner.stream('Hello', { maxTokens: 50, ignoreEos: true, temperature: 0, signal: c2.signal })
  let chunks = 0
  const e = await t.throwsAsync(async () => {
    for await (const _ of s) {
      chunks++
      c2.abort()
    }
  })
  t.is(e.name, 'AbortError')
  t.true(chunks < 50, `stopped early (${chunks} chunks)`)
  await stillWorks(t)
})

test('calls on a disposed runner throw DISPOSED', async (t) => {
  const runner = await ModelRunner.load({ modelName: fixtureDir })
  await runner.dispose()
  t.throws(() => runner.tokenize('x'), { code: 'DISPOSED' })
  await t.throwsAsync(runner.generate('x'), { code: 'DISPOSED' })
})

test('the TypeScript option lists are the engine\'s lists', (t) => {
  const v = optionValues()
  // QuantizationType (the Python API's constants) names exactly the engine's modes, in its order.
  t.deepEqual(Object.values(QuantizationType), v.quantization)
  t.deepEqual(v.compileMode, ['default', 'reduce-overhead', 'max-autotune'])
  t.deepEqual(v.kvCacheDtype, ['f32', 'f16', 'bf16'])
  t.deepEqual(v.int4GroupSize, [32, 64, 128])
  t.deepEqual(v.int4LmHead, ['q8_0', 'q4_0'])
  t.throws(() => createAccelerationConfig({ int4LmHead: 'q6_k' }), { message: /int4LmHead = "q6_k": allowed "q8_0", "q4_0"/ })
  t.is(createAccelerationConfig({ int4_lm_head: 'q4_0' }).int4LmHead, 'q4_0')
  t.throws(() => createAccelerationConfig({ int4GroupSize: 48 }), { message: /int4GroupSize = 48: allowed 32, 64, 128/ })
  t.throws(() => createAccelerationConfig({ kvCacheDtype: 'f8' }), { message: /kvCacheDtype = "f8": allowed "f32", "f16", "bf16"/ })
})
