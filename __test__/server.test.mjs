// The OpenAI-compatible server on 127.0.0.1 with the tiny fixture (random weights), driven by the
// official openai client: chat and completions (streamed and not), tool calls and json_schema
// enforced by the grammar, logprobs, n, aborts, every error status, and a bounded load run.
import test from 'ava'
import OpenAI from 'openai'
import { createServer } from '../dist/index.mjs'
import { fixtureDir } from './helpers.mjs'
import { loadTestRunner, testDevice } from './test-device.mjs'

const MODEL = 'qwen3-tiny'
const onTestDevice = testDevice !== 'auto'
const KEY = 'test-key-123'
let server
let client

test.before(async () => {
  const runner = await loadTestRunner()
  server = await createServer({ runner, port: 0, apiKey: KEY, servedModelName: MODEL, maxQueue: 64 })
  client = new OpenAI({ baseURL: server.baseURL, apiKey: KEY, maxRetries: 0 })
})
test.after.always(async () => {
  await server?.close({ graceMs: 100 })
  await server?.runner.dispose()
})

const origin = () => server.baseURL.replace(/\/v1$/, '')
const post = (path, body, headers = {}, signal = undefined) =>
  fetch(origin() + path, { method: 'POST', signal, headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}`, ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) })
const serving = () => server.runner.getModelInfo().serving
async function settled() {
  for (let i = 0; i < 200 && serving().runningSequences + serving().waitingSequences > 0; i++) await new Promise((r) => setTimeout(r, 20))
  return serving()
}
const messages = [{ role: 'user', content: 'Tell me about Paris.' }]

test.serial('chat: a whole completion, then the same streamed, chunk shapes as OpenAI', async (t) => {
  const params = { model: MODEL, messages, max_tokens: 12, temperature: 0, seed: 1 }
  const whole = await client.chat.completions.create(params)
  t.is(whole.object, 'chat.completion')
  t.regex(whole.id, /^chatcmpl-/)
  t.is(whole.choices.length, 1)
  t.is(whole.choices[0].message.role, 'assistant')
  t.is(whole.choices[0].finish_reason, 'length')
  t.is(whole.usage.completion_tokens, 12)
  t.is(whole.usage.total_tokens, whole.usage.prompt_tokens + 12)

  const stream = await client.chat.completions.create({ ...params, stream: true, stream_options: { include_usage: true } })
  const chunks = []
  for await (const c of stream) chunks.push(c)
  t.true(chunks.every((c) => c.id === chunks[0].id && c.object === 'chat.completion.chunk'))
  t.deepEqual(chunks[0].choices[0].delta, { role: 'assistant', content: '' })
  const withChoices = chunks.filter((c) => c.choices.length)
  t.is(withChoices.at(-1).choices[0].finish_reason, 'length')
  t.true(withChoices.slice(0, -1).every((c) => c.choices[0].finish_reason === null))
  // The usage chunk comes last, with no choices, and every other chunk has usage: null.
  const last = chunks.at(-1)
  t.deepEqual(last.choices, [])
  t.is(last.usage.completion_tokens, 12)
  t.is(typeof last.usage.prompt_tokens_details.cached_tokens, 'number')
  t.true(chunks.slice(0, -1).every((c) => c.usage === null))
  const text = withChoices.map((c) => (c.choices[0].delta.content ?? '') + (c.choices[0].delta.reasoning_content ?? '')).join('')
  const wholeText = (whole.choices[0].message.content ?? '') + (whole.choices[0].message.reasoning_content ?? '')
  t.is(text, wholeText)
})

test.serial('the raw stream ends with data: [DONE] and repeats the prefix cache in usage', async (t) => {
  // 40+ prompt tokens: two full blocks of 16 to find in the cache.
  const long = [{ role: 'user', content: 'Tell me about Paris, the capital of France, its museums, its river, its food and its history, in detail.' }]
  const body = { model: MODEL, messages: long, max_tokens: 3, temperature: 0, stream: true, stream_options: { include_usage: true } }
  await post('/v1/chat/completions', body).then((r) => r.text())
  const res = await post('/v1/chat/completions', body)
  t.is(res.headers.get('content-type'), 'text/event-stream; charset=utf-8')
  const raw = await res.text()
  t.true(raw.endsWith('data: [DONE]\n\n'))
  const events = raw.trim().split('\n\n')
  t.true(events.every((e) => e.startsWith('data: ')))
  const usage = JSON.parse(events.at(-2).slice(6)).usage
  t.true(usage.prompt_tokens_details.cached_tokens > 0, JSON.stringify(usage))
})

test.serial("continuous_usage_stats (vLLM's extension): every chunk carries the tokens so far", async (t) => {
  const body = { model: MODEL, prompt: 'Once upon', max_tokens: 9, temperature: 0, ignore_eos: true, stream: true, stream_options: { continuous_usage_stats: true } }
  const raw = await (await post('/v1/completions', body)).text()
  const chunks = raw.split('\n\n').filter((e) => e.startsWith('data: {')).map((e) => JSON.parse(e.slice(6)))
  const counts = chunks.map((c) => c.usage.completion_tokens)
  t.true(counts.every((n, i) => i === 0 || n >= counts[i - 1]), JSON.stringify(counts))
  t.is(counts.at(-1), 9)
  t.true(chunks.every((c) => c.usage.prompt_tokens === server.runner.tokenize('Once upon').length))
})

test.serial('completions: string, token and batched prompts, streaming, echo, logprobs', async (t) => {
  const r = await client.completions.create({ model: MODEL, prompt: 'Once upon', max_tokens: 5, temperature: 0, logprobs: 2 })
  t.is(r.object, 'text_completion')
  t.is(r.choices[0].logprobs.tokens.length, 5)
  t.true(r.choices[0].logprobs.top_logprobs.every((o) => Object.keys(o).length >= 1 && Object.keys(o).length <= 2))
  t.true(r.choices[0].logprobs.token_logprobs.every((x) => x <= 0))
  const ids = server.runner.tokenize('Once upon')
  const byIds = await client.completions.create({ model: MODEL, prompt: ids, max_tokens: 5, temperature: 0 })
  t.is(byIds.choices[0].text, r.choices[0].text)
  const echo = await client.completions.create({ model: MODEL, prompt: 'Once upon', max_tokens: 5, temperature: 0, echo: true, logprobs: 1 })
  t.is(echo.choices[0].text, 'Once upon' + r.choices[0].text)
  t.is(echo.choices[0].logprobs.tokens.length, ids.length + 5)
  t.is(echo.choices[0].logprobs.token_logprobs[0], null)
  // Each prompt position's top alternative is at least as likely as the token that came.
  const lp = echo.choices[0].logprobs
  for (let i = 1; i < ids.length; i++) t.true(Object.values(lp.top_logprobs[i])[0] >= lp.token_logprobs[i] - 1e-6)
  const batch = await client.completions.create({ model: MODEL, prompt: ['a b c', 'Once upon'], max_tokens: 5, temperature: 0 })
  t.deepEqual(batch.choices.map((c) => c.index), [0, 1])
  t.is(batch.choices[1].text, r.choices[0].text)
  const s = await client.completions.create({ model: MODEL, prompt: 'Once upon', max_tokens: 5, temperature: 0, stream: true })
  let text = ''
  let finish
  for await (const c of s) {
    text += c.choices[0].text
    finish = c.choices[0].finish_reason ?? finish
  }
  t.is(text, r.choices[0].text)
  t.is(finish, 'length')
})

const weatherTool = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Weather in a city',
    parameters: {
      type: 'object',
      properties: { city: { type: 'string', maxLength: 20 }, unit: { enum: ['c', 'f'] }, days: { type: 'integer', minimum: 1, maximum: 7 } },
      required: ['city', 'unit', 'days'],
      additionalProperties: false,
    },
  },
}
const timeTool = { type: 'function', function: { name: 'get_time', parameters: { type: 'object', properties: { zone: { enum: ['utc', 'cet'] } }, required: ['zone'], additionalProperties: false } } }

function checkWeatherArgs(t, args) {
  t.deepEqual(Object.keys(args).sort(), ['city', 'days', 'unit'])
  t.is(typeof args.city, 'string')
  t.true([...args.city].length <= 20)
  t.true(['c', 'f'].includes(args.unit))
  t.true(Number.isInteger(args.days) && args.days >= 1 && args.days <= 7)
}

test.serial('tool_choice required and a named function give valid tool calls, whole and streamed', async (t) => {
  for (const seed of [1, 2, 3]) {
    const r = await client.chat.completions.create({ model: MODEL, messages, tools: [weatherTool, timeTool], tool_choice: 'required', max_tokens: 120, temperature: 1, seed })
    const choice = r.choices[0]
    t.is(choice.finish_reason, 'tool_calls', JSON.stringify(choice))
    const call = choice.message.tool_calls[0]
    t.regex(call.id, /^call_/)
    t.true(['get_weather', 'get_time'].includes(call.function.name))
    const args = JSON.parse(call.function.arguments)
    if (call.function.name === 'get_weather') checkWeatherArgs(t, args)
    else t.true(['utc', 'cet'].includes(args.zone))
  }
  const named = { model: MODEL, messages, tools: [weatherTool, timeTool], tool_choice: { type: 'function', function: { name: 'get_weather' } }, max_tokens: 120, temperature: 1, seed: 9 }
  const r = await client.chat.completions.create(named)
  t.is(r.choices[0].message.tool_calls[0].function.name, 'get_weather')
  checkWeatherArgs(t, JSON.parse(r.choices[0].message.tool_calls[0].function.arguments))
  const s = await client.chat.completions.create({ ...named, stream: true })
  const parts = []
  let finish
  for await (const c of s) {
    for (const tc of c.choices[0]?.delta.tool_calls ?? []) parts.push(tc)
    finish = c.choices[0]?.finish_reason ?? finish
  }
  t.is(finish, 'tool_calls')
  t.is(parts[0].function.name, 'get_weather')
  t.regex(parts[0].id, /^call_/)
  t.true(parts.every((p) => p.index === 0))
  t.true(parts.length > 3, `arguments streamed in ${parts.length - 1} deltas`)
  checkWeatherArgs(t, JSON.parse(parts.map((p) => p.function.arguments).join('')))
})

const personSchema = {
  type: 'object',
  properties: {
    name: { type: 'string', maxLength: 16 },
    age: { type: 'integer', minimum: 0, maximum: 130 },
    pets: { type: 'array', maxItems: 3, items: { type: 'object', properties: { kind: { enum: ['cat', 'dog'] }, legs: { type: 'integer', minimum: 0, maximum: 4 } }, required: ['kind', 'legs'], additionalProperties: false } },
    home: { type: 'object', properties: { city: { type: 'string', maxLength: 12 } }, required: ['city'], additionalProperties: false },
  },
  required: ['name', 'age', 'pets', 'home'],
  additionalProperties: false,
}

function checkPerson(t, v, seed) {
  t.deepEqual(Object.keys(v).sort(), ['age', 'home', 'name', 'pets'], `seed ${seed}`)
  t.true(typeof v.name === 'string' && [...v.name].length <= 16) // maxLength counts code points
  t.true(Number.isInteger(v.age) && v.age >= 0 && v.age <= 130)
  t.true(Array.isArray(v.pets) && v.pets.length <= 3)
  for (const p of v.pets) {
    t.deepEqual(Object.keys(p).sort(), ['kind', 'legs'])
    t.true(['cat', 'dog'].includes(p.kind) && Number.isInteger(p.legs) && p.legs >= 0 && p.legs <= 4)
  }
  t.deepEqual(Object.keys(v.home), ['city'])
  t.true(typeof v.home.city === 'string' && [...v.home.city].length <= 12)
}

test.serial('json_schema strict output parses and validates on 20 seeds (random weights)', async (t) => {
  const outs = await Promise.all(
    Array.from({ length: 20 }, (_, seed) =>
      client.chat.completions.create({
        model: MODEL,
        messages,
        max_tokens: 300,
        temperature: 1,
        seed,
        response_format: { type: 'json_schema', json_schema: { name: 'person', schema: personSchema, strict: true } },
      }),
    ),
  )
  outs.forEach((r, seed) => checkPerson(t, JSON.parse(r.choices[0].message.content), seed))
  // Any object: random weights may open keys without end, so an answer cut by max_tokens is only a start.
  const objs = await Promise.all([0, 1, 2, 3, 4, 5].map((seed) => client.chat.completions.create({ model: MODEL, messages, max_tokens: 200, temperature: 1, seed, response_format: { type: 'json_object' } })))
  for (const o of objs) {
    const { content } = o.choices[0].message
    if (o.choices[0].finish_reason === 'stop') t.true(JSON.parse(content) !== null && typeof JSON.parse(content) === 'object' && !Array.isArray(JSON.parse(content)), content)
    else t.true(content.startsWith('{'), content)
  }
  t.true(objs.some((o) => o.choices[0].finish_reason === 'stop'))
})

test.serial('logprobs and top_logprobs have OpenAI shapes; n: 3 gives three choices', async (t) => {
  const r = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 4, temperature: 0, logprobs: true, top_logprobs: 3 })
  const lp = r.choices[0].logprobs.content
  t.is(lp.length, 4)
  for (const x of lp) {
    t.is(typeof x.token, 'string')
    t.true(Array.isArray(x.bytes) && x.logprob <= 0)
    t.is(x.top_logprobs.length, 3)
    t.is(x.top_logprobs[0].token, x.token) // greedy
  }
  const n = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 6, temperature: 1, seed: 5, n: 3 })
  t.deepEqual(n.choices.map((c) => c.index), [0, 1, 2])
  t.is(n.usage.completion_tokens, 18)
  const texts = n.choices.map((c) => (c.message.content ?? '') + (c.message.reasoning_content ?? ''))
  t.true(new Set(texts).size > 1, 'different seeds per choice')
})

test.serial('a client that aborts mid-stream cancels its request and frees its blocks', async (t) => {
  const ac = new AbortController()
  const steps = serving().steps
  const s = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 3000, temperature: 0, stream: true, ignore_eos: true }, { signal: ac.signal })
  let seen = 0
  try {
    // Stop reading at the abort: chunks that arrived in the same read would still be handed out.
    for await (const _ of s) {
      if (++seen === 5) {
        ac.abort()
        break
      }
    }
  } catch {
    // the client reports the abort as an error or as the end of the stream
  }
  t.is(seen, 5)
  const after = await settled()
  t.is(after.blocksUsed, 0)
  t.is(after.runningSequences, 0)
  // It stopped soon after the disconnect: nowhere near the 3000 steps it asked for.
  t.true(after.steps - steps < 1000, `${after.steps - steps} steps`)
})

test.serial('errors: OpenAI shapes and statuses, and a wrong key never reaches the model', async (t) => {
  const expect = async (res, status, param) => {
    t.is(res.status, status)
    const body = await res.json()
    t.deepEqual(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type'])
    if (param !== undefined) t.is(body.error.param, param)
    return body.error
  }
  const steps = (await settled()).steps
  await expect(await post('/v1/chat/completions', { model: MODEL, messages }, { authorization: 'Bearer nope' }), 401)
  await expect(await post('/v1/chat/completions', { model: MODEL, messages }, { authorization: '' }), 401)
  t.is(serving().steps, steps)
  const e = await expect(await post('/v1/chat/completions', { model: MODEL, messages, temperature: 3 }), 400, 'temperature')
  t.regex(e.message, /temperature = 3/)
  t.regex(e.message, /less than or equal to 2/)
  await expect(await post('/v1/chat/completions', { model: MODEL, messages: [] }), 400, 'messages')
  await expect(await post('/v1/chat/completions', { model: MODEL, messages, top_logprobs: 21, logprobs: true }), 400, 'top_logprobs')
  await expect(await post('/v1/chat/completions', { model: MODEL, messages, tool_choice: 'required' }), 400, 'tool_choice')
  await expect(await post('/v1/chat/completions', { model: MODEL, messages, logit_bias: { 99999999: 1 } }), 400)
  await expect(await post('/v1/chat/completions', { model: MODEL, messages, stream: true, logit_bias: { 99999999: 1 } }), 400)
  await expect(await post('/v1/chat/completions', '{not json'), 400)
  await expect(await post('/v1/completions', { model: MODEL, prompt: 'x', suffix: 'y' }), 400, 'suffix')
  await expect(await post('/v1/completions', { model: MODEL, prompt: Array(600).fill(300), echo: true, logprobs: 1 }), 400, 'echo')
  await expect(await post('/v1/completions', { model: MODEL, prompt: 'x', n: 17 }), 400, 'n')
  await expect(await post('/v1/chat/completions', { model: 'gpt-4', messages }), 404, 'model')
  await expect(await fetch(origin() + '/v1/nothing', { headers: { authorization: `Bearer ${KEY}` } }), 404)
  await expect(await post('/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: 'x'.repeat(5 << 20) }] }), 413)
  t.is(serving().steps, steps, 'no bad request ran a step')
  t.is((await fetch(origin() + '/health')).status, 200)
  t.is((await fetch(origin() + '/ready')).status, 200)
})

test.serial('429 once the waiting queue is full', async (t) => {
  const runner = await loadTestRunner({ maxConcurrentSequences: 1 })
  const small = await createServer({ runner, port: 0, maxQueue: 1, servedModelName: MODEL })
  const c = new OpenAI({ baseURL: small.baseURL, apiKey: 'x', maxRetries: 0 })
  const long = { model: MODEL, messages, max_tokens: onTestDevice ? 40 : 400, temperature: 0, ignore_eos: true }
  const first = [c.chat.completions.create(long), c.chat.completions.create(long)]
  // Both in the engine (one running, one waiting) before the third is sent, however slow the machine.
  const inEngine = () => runner.getModelInfo().serving
  for (let i = 0; i < 500 && inEngine().runningSequences + inEngine().waitingSequences < 2; i++) await new Promise((r) => setTimeout(r, 10))
  const err = await t.throwsAsync(c.chat.completions.create(long))
  t.is(err.status, 429)
  await Promise.all(first)
  await small.close({ graceMs: 100 })
  await runner.dispose()
})

test.serial('tokenize, detokenize, models and metrics with vLLM names', async (t) => {
  const tok = await (await post('/tokenize', { model: MODEL, prompt: 'hello world' })).json()
  t.deepEqual(tok.tokens, server.runner.tokenize('hello world'))
  t.is(tok.count, tok.tokens.length)
  const detok = await (await post('/detokenize', { model: MODEL, tokens: tok.tokens })).json()
  t.is(detok.prompt, 'hello world')
  const models = await client.models.list()
  t.deepEqual(models.data.map((m) => m.id), [MODEL])
  const metrics = await (await fetch(origin() + '/metrics')).text()
  for (const name of ['vllm:num_requests_running', 'vllm:num_requests_waiting', 'vllm:kv_cache_usage_perc', 'vllm:prompt_tokens_total', 'vllm:generation_tokens_total', 'vllm:time_to_first_token_seconds_bucket', 'vllm:inter_token_latency_seconds_count', 'vllm:prefix_cache_hits_total']) {
    t.regex(metrics, new RegExp(`^${name}\\{model_name="${MODEL}"`, 'm'), name)
  }
  const generated = Number(/^vllm:generation_tokens_total\{[^}]*\} (\d+)/m.exec(metrics)[1])
  t.true(generated > 0)
  t.regex(metrics, /nano_qwen3:http_responses_total\{[^}]*status="401"\} [1-9]/)
})

test.serial('load: 500 requests from 32 clients, 10% disconnecting; completed ones equal their solo run', async (t) => {
  // On the GPU test run (lavapipe: each step costs ~100x the CPU path's on this tiny model) 120
  // requests; the same rules.
  const N = onTestDevice ? 120 : 500
  const prompts = Array.from({ length: 16 }, (_, i) => `Request number ${i}: ${'word '.repeat(i % 5)}`)
  const body = (i) => ({ model: MODEL, prompt: prompts[i % 16], max_tokens: 4 + (i % 7), temperature: 0 })
  // body(i) repeats every 112 requests (16 prompts x 7 lengths).
  const solo = []
  for (let i = 0; i < Math.min(112, N); i++) solo[i] = (await client.completions.create(body(i))).choices[0].text
  // Warm-up at the same concurrency (32 connections, their buffers, the heap's working size), so
  // "before" is the steady state and growth past it would be a leak.
  await Promise.all(Array.from({ length: 64 }, (_, i) => post('/v1/completions', { ...body(i), stream: i % 2 === 0 }).then((r) => r.text())))
  const rssBefore = process.memoryUsage().rss
  let next = 0
  let completed = 0
  let disconnected = 0
  const statuses = new Set()
  const worker = async (w) => {
    for (;;) {
      const i = next++
      if (i >= N) return
      const stream = i % 2 === 0
      if ((i * 7919 + w) % 10 === 0) {
        // Gone at a point that varies: before the answer, between chunks, or just after it.
        const ac = new AbortController()
        setTimeout(() => ac.abort(), (i % 6) * 4)
        await post('/v1/completions', { ...body(i), stream, max_tokens: 40 }, {}, ac.signal)
          .then((res) => res.text())
          .catch(() => {})
        disconnected++
        continue
      }
      const res = await post('/v1/completions', { ...body(i), stream })
      statuses.add(res.status)
      if (stream) {
        const raw = await res.text()
        t.true(raw.endsWith('data: [DONE]\n\n'))
        const text = raw.split('\n\n').filter((e) => e.startsWith('data: {')).map((e) => JSON.parse(e.slice(6)).choices[0]?.text ?? '').join('')
        t.is(text, solo[i % 112], `request ${i}`)
      } else {
        const r = await res.json()
        t.is(r.choices[0].text, solo[i % 112], `request ${i}`)
      }
      completed++
    }
  }
  await Promise.all(Array.from({ length: 32 }, (_, w) => worker(w)))
  t.deepEqual([...statuses], [200])
  // Server-side, the disconnects are 499s (client closed), never 5xx.
  const metrics = await (await fetch(origin() + '/metrics')).text()
  t.notRegex(metrics, /nano_qwen3:http_responses_total\{[^}]*status="5\d\d"\}/)
  t.true(disconnected >= N * 0.08 && completed + disconnected === N, `${completed} completed, ${disconnected} disconnected`)
  const after = await settled()
  t.is(after.blocksUsed, 0)
  const rssAfter = process.memoryUsage().rss
  t.log(`RSS ${(rssBefore / 2 ** 20).toFixed(0)} MiB -> ${(rssAfter / 2 ** 20).toFixed(0)} MiB`)
  t.true(rssAfter < rssBefore * 1.1, `RSS ${rssBefore} -> ${rssAfter}`)
})

test.serial('createServer loads a runner from modelName, serves it, and disposes it on close', async (t) => {
  const own = await createServer({ modelName: fixtureDir, threads: 2, port: 0 })
  const models = await (await fetch(`${own.baseURL}/models`)).json()
  t.deepEqual(models.data.map((m) => m.id), [fixtureDir])
  const r = await (await fetch(`${own.baseURL}/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'hi', max_tokens: 2 }) })).json()
  t.is(r.usage.completion_tokens <= 2, true)
  await own.close()
  t.throws(() => own.runner.tokenize('x'), { code: 'DISPOSED' })
  await t.throwsAsync(createServer({ modelName: fixtureDir, port: 70000 }), { message: /port/ })
})
