// Rules of the OpenAI-compatible server tested one by one (each fails when its rule breaks):
// grammars the client got wrong are 400s naming the field, forced tool calls always close (and
// still come back as calls when max_tokens cuts them), every protected route wants the key, and
// each OpenAI field with an alias or a precedence does what OpenAI says, alone and in conflict.
import test from 'ava'
import OpenAI from 'openai'
import { createServer } from '../dist/index.mjs'
import { loadTestRunner } from './test-device.mjs'

const MODEL = 'qwen3-tiny'
const KEY = 'rules-key'
let runner
let server
let client

test.before(async () => {
  runner = await loadTestRunner()
  server = await createServer({ runner, port: 0, apiKey: KEY, servedModelName: MODEL })
  client = new OpenAI({ baseURL: server.baseURL, apiKey: KEY, maxRetries: 0 })
})
test.after.always(async () => {
  await server?.close({ graceMs: 100 })
  await runner?.dispose()
})

const origin = () => server.baseURL.replace(/\/v1$/, '')
const post = (path, body, headers = { authorization: `Bearer ${KEY}` }) =>
  fetch(origin() + path, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) })
const steps = () => runner.getModelInfo().serving.steps
const messages = [{ role: 'user', content: 'Weather in Paris?' }]

/** A 400 in OpenAI's shape naming `param`, whose message is one plain sentence of ours. */
async function refused(t, res, param, what) {
  t.is(res.status, 400, what)
  const { error } = await res.json()
  t.is(error.param, param, what)
  t.is(error.type, 'invalid_request_error', what)
  t.notRegex(error.message, /\n|Tokens:|internal|NoExtensionBias|state|panicked/i, what)
  t.true(error.message.length < 400, `${what}: ${error.message}`)
  return error.message
}

const nested = (depth) => {
  let s = { type: 'string' }
  for (let i = 0; i < depth; i++) s = { type: 'object', properties: { a: s }, required: ['a'] }
  return s
}
const tool = (name, parameters) => ({ type: 'function', function: { name, parameters } })

test.serial('grammars the client got wrong are 400s that name the field, never 500s with internals', async (t) => {
  const before = steps()
  const schema = (s) => ({ model: MODEL, messages, response_format: { type: 'json_schema', json_schema: { name: 'x', schema: s } } })
  // Nested past the bound (2,000 levels): refused before it reaches the engine.
  t.regex(await refused(t, await post('/v1/chat/completions', schema(nested(2000))), 'response_format', 'deep schema'), /more than 64 levels/)
  t.regex(await refused(t, await post('/v1/chat/completions', { model: MODEL, messages, tools: [tool('f', nested(2000))], tool_choice: 'required' }), 'tools', 'deep tool'), /64 levels/)
  t.regex(await refused(t, await post('/v1/completions', { model: MODEL, prompt: 'x', structured_outputs: { json: JSON.stringify(nested(2000)) } }), 'structured_outputs.json', 'deep schema as a string'), /64 levels/)
  // A schema that only refers to itself admits no output at all.
  const self = { $ref: '#' }
  t.regex(await refused(t, await post('/v1/chat/completions', schema(self)), 'response_format.json_schema.schema', 'self ref'), /^invalid response_format\.json_schema\.schema: .*admits no output/)
  await refused(t, await post('/v1/chat/completions', { ...schema(self), stream: true }), 'response_format.json_schema.schema', 'streamed self ref')
  await refused(t, await post('/v1/chat/completions', { model: MODEL, messages, tools: [tool('f', { type: 'object', properties: { a: { type: 'string', pattern: '(' } } })], tool_choice: 'required' }), 'tools', 'bad pattern in a tool')
  // A keyword llguidance does not support, in a response format and in a tool's parameters.
  const unsupported = { type: 'object', properties: { a: { type: 'string' } }, $dynamicRef: '#x' }
  await refused(t, await post('/v1/chat/completions', schema(unsupported)), 'response_format.json_schema.schema', 'unsupported keyword')
  await refused(t, await post('/v1/chat/completions', { model: MODEL, messages, tools: [tool('f', unsupported)], tool_choice: 'required' }), 'tools', 'unsupported in a tool')
  // vLLM's structured_outputs: a bad regex and a bad Lark grammar, on both endpoints.
  await refused(t, await post('/v1/chat/completions', { model: MODEL, messages, structured_outputs: { regex: '(ab' } }), 'structured_outputs.regex', 'bad regex')
  await refused(t, await post('/v1/completions', { model: MODEL, prompt: 'x', structured_outputs: { grammar: 'start: ???' } }), 'structured_outputs.grammar', 'bad lark')
  await refused(t, await post('/v1/completions', { model: MODEL, prompt: 'x', structured_outputs: { regex: 'a', choice: ['b'] } }), 'structured_outputs', 'two at once')
  await refused(t, await post('/v1/chat/completions', { ...schema({ type: 'integer' }), structured_outputs: { regex: 'a' } }), 'structured_outputs', 'two constraints')
  t.is(steps(), before, 'no refused request ran a step')
  // Within the bound, nesting still works (the bound is not lower than it says).
  t.is((await post('/v1/chat/completions', { ...schema(nested(20)), max_tokens: 2 })).status, 200)
  // One that recurses without end has every prefix valid: it runs to max_tokens (a 200, never a 500).
  const endless = await post('/v1/chat/completions', { ...schema({ type: 'object', properties: { a: { $ref: '#' } }, required: ['a'] }), max_tokens: 12 })
  t.is(endless.status, 200)
  const body = await endless.json()
  t.is(body.choices[0].finish_reason, 'length')
  t.true(body.choices[0].message.content.startsWith('{"a": {'), body.choices[0].message.content)
})

test.serial('structured_outputs regex and choice constrain the text', async (t) => {
  for (const seed of [1, 2, 3]) {
    const r = await client.completions.create({ model: MODEL, prompt: 'x', max_tokens: 20, temperature: 1, seed, structured_outputs: { regex: '[0-9]{3}-[a-z]{2}' } })
    t.regex(r.choices[0].text, /^[0-9]{3}-[a-z]{2}$/)
    const c = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 20, temperature: 1, seed, structured_outputs: { choice: ['yes (a)', 'no [b]'] } })
    t.true(['yes (a)', 'no [b]'].includes(c.choices[0].message.content), c.choices[0].message.content)
  }
})

// No `additionalProperties` and no `required`: JSON Schema lets other keys in; the server does not.
const openTool = tool('get_weather', { type: 'object', properties: { city: { type: 'string', maxLength: 20 }, days: { type: 'integer', minimum: 1, maximum: 14 } } })
const otherTool = tool('get_time', { type: 'object', properties: { zone: { enum: ['utc', 'cet'] } } })

function checkOpenArgs(t, call, seed) {
  const args = JSON.parse(call.function.arguments)
  const allowed = call.function.name === 'get_weather' ? ['city', 'days'] : ['zone']
  t.true(Object.keys(args).every((k) => allowed.includes(k)), `seed ${seed}: ${call.function.arguments}`)
  if ('city' in args) t.true(typeof args.city === 'string' && [...args.city].length <= 20)
  if ('days' in args) t.true(Number.isInteger(args.days) && args.days >= 1 && args.days <= 14)
  if ('zone' in args) t.true(['utc', 'cet'].includes(args.zone))
}

test.serial('forced tool calls close on 20 seeds at temperature 0.8 when the schema leaves other keys open', async (t) => {
  const seeds = Array.from({ length: 20 }, (_, s) => s)
  for (const tool_choice of ['required', { type: 'function', function: { name: 'get_weather' } }]) {
    const outs = await Promise.all(seeds.map((seed) => client.chat.completions.create({ model: MODEL, messages, tools: [openTool, otherTool], tool_choice, max_tokens: 200, temperature: 0.8, seed })))
    outs.forEach((r, seed) => {
      const c = r.choices[0]
      t.is(c.finish_reason, 'tool_calls', `seed ${seed}: ${JSON.stringify(c.message)}`)
      t.is(c.message.content, null)
      t.is(c.message.tool_calls.length, 1)
      if (typeof tool_choice === 'object') t.is(c.message.tool_calls[0].function.name, 'get_weather')
      checkOpenArgs(t, c.message.tool_calls[0], seed)
    })
  }
})

test.serial('strictSchemas: false gives JSON Schema its default back (other keys may be generated)', async (t) => {
  const open = await createServer({ runner, port: 0, servedModelName: MODEL, strictSchemas: false })
  try {
    const c = new OpenAI({ baseURL: open.baseURL, apiKey: 'x', maxRetries: 0 })
    const outs = await Promise.all([0, 1, 2, 3, 4].map((seed) => c.chat.completions.create({ model: MODEL, messages, tools: [openTool], tool_choice: 'required', max_tokens: 120, temperature: 0.8, seed })))
    // Random weights wander: with other keys allowed some answer adds one or runs out of tokens.
    const wandered = outs.filter((r) => {
      const call = r.choices[0].message.tool_calls?.[0]
      return r.choices[0].finish_reason === 'length' || Object.keys(JSON.parse(call.function.arguments)).some((k) => !['city', 'days'].includes(k))
    })
    t.true(wandered.length > 0, 'every answer kept to the named keys: the option changed nothing')
  } finally {
    await open.close({ graceMs: 100 })
  }
})

test.serial('a forced call cut by max_tokens is still a tool call, with finish_reason "length", whole and streamed', async (t) => {
  const named = { type: 'function', function: { name: 'get_weather' } }
  for (const [max_tokens, tool_choice] of [[1, named], [3, 'required'], [12, named], [12, 'required']]) {
    const r = await client.chat.completions.create({ model: MODEL, messages, tools: [openTool, otherTool], tool_choice, max_tokens, temperature: 0.8, seed: 3, ignore_eos: true })
    const c = r.choices[0]
    const what = `max_tokens ${max_tokens}: ${JSON.stringify(c.message)}`
    t.is(c.finish_reason, 'length', what)
    t.is(c.message.content, null, what)
    t.is(c.message.tool_calls.length, 1, what)
    const call = c.message.tool_calls[0]
    t.regex(call.id, /^call_/)
    t.true(['get_weather', 'get_time'].includes(call.function.name), what)
    if (typeof tool_choice === 'object') t.is(call.function.name, 'get_weather')
    t.is(typeof call.function.arguments, 'string')
    // The arguments as far as they got: a beginning of a JSON object, never the markup around it.
    t.notRegex(call.function.arguments, /tool_call|"name"/, what)
    if (call.function.arguments) t.true(call.function.arguments.startsWith('{'), what)

    const s = await client.chat.completions.create({ model: MODEL, messages, tools: [openTool, otherTool], tool_choice, max_tokens, temperature: 0.8, seed: 3, ignore_eos: true, stream: true })
    const parts = []
    let finish
    let content = ''
    for await (const ch of s) {
      for (const tc of ch.choices[0]?.delta.tool_calls ?? []) parts.push(tc)
      content += ch.choices[0]?.delta.content ?? ''
      finish = ch.choices[0]?.finish_reason ?? finish
    }
    t.is(finish, 'length', `streamed, ${what}`)
    t.is(content, '', `streamed, ${what}`)
    t.is(parts[0]?.function.name, call.function.name, `streamed, ${what}`)
    t.is(parts.map((p) => p.function.arguments).join(''), call.function.arguments, `streamed, ${what}`)
  }
})

/** [method, full path] of fastify's printRoutes tree (children indented under their prefix). */
function routeList(tree) {
  const stack = []
  const out = []
  for (const line of tree.split('\n')) {
    const m = /^([│ ]*)[├└]── (\S+) \(([A-Z, ]+)\)/.exec(line)
    if (!m) continue
    const depth = m[1].length / 4
    stack.length = depth
    stack.push(m[2])
    for (const method of m[3].split(', ')) out.push([method, stack.join('')])
  }
  return out
}

test.serial('every route but health, readiness and metrics refuses a request with no Authorization header at all', async (t) => {
  const before = steps()
  const routes = [
    ['POST', '/v1/chat/completions', { model: MODEL, messages }],
    ['POST', '/v1/completions', { model: MODEL, prompt: 'x' }],
    ['GET', '/v1/models'],
    ['GET', `/v1/models/${MODEL}`],
    ['POST', '/tokenize', { prompt: 'x' }],
    ['POST', '/detokenize', { tokens: [1] }],
  ]
  const send = (method, path, body, headers) =>
    fetch(origin() + path, { method, headers: { ...(body ? { 'content-type': 'application/json' } : {}), ...headers }, body: body && JSON.stringify(body) })
  // Every route the server has under /v1, /tokenize and /detokenize, whichever exist (so a route
  // added later is swept too), without a key and with malformed ones.
  const listed = server.app.printRoutes({ commonPrefix: false })
  const registered = routeList(listed)
  const protectedRoutes = registered.filter(([m, p]) => m !== 'HEAD' && !['/health', '/ready', '/metrics'].includes(p))
  for (const [m, p] of routes) t.true(protectedRoutes.some(([rm, rp]) => rm === m && (rp === p || rp.includes(':'))), `${m} ${p} is not among the routes found:\n${listed}`)
  for (const [method, path] of protectedRoutes) {
    const body = method === 'POST' ? (routes.find(([m, p]) => m === method && p === path)?.[2] ?? {}) : undefined
    for (const headers of [{}, { authorization: 'Bearer' }, { authorization: `bearer ${KEY}` }, { authorization: KEY }]) {
      const res = await send(method, path.replace(':id', MODEL), body, headers)
      t.is(res.status, 401, `${method} ${path} with ${JSON.stringify(headers)}`)
      t.is((await res.json()).error.code, 'invalid_api_key')
    }
  }
  t.is(steps(), before, 'no refused request reached the model')
  for (const [method, path, body] of routes) {
    const ok = await send(method, path, body && { ...body, ...(path.includes('completions') ? { max_tokens: 1 } : {}) }, { authorization: `Bearer ${KEY}` })
    t.is(ok.status, 200, `${method} ${path} with the key`)
  }
  // Health, readiness and metrics stay open (probes and scrapers carry no key).
  for (const p of ['/health', '/ready', '/metrics']) t.is((await fetch(origin() + p)).status, 200, p)
})

test.serial('max_completion_tokens and max_tokens: each alone, and max_completion_tokens wins when both are sent', async (t) => {
  const base = { model: MODEL, messages, temperature: 0, ignore_eos: true }
  const n = async (extra) => (await client.chat.completions.create({ ...base, ...extra })).usage.completion_tokens
  t.is(await n({ max_completion_tokens: 3 }), 3)
  t.is(await n({ max_tokens: 4 }), 4)
  t.is(await n({ max_tokens: 5, max_completion_tokens: 2 }), 2)
  t.is(await n({ max_tokens: 2, max_completion_tokens: 5 }), 5)
  // Completions: max_tokens, default 16 (OpenAI's legacy default).
  const c = await client.completions.create({ model: MODEL, prompt: 'x', temperature: 0, ignore_eos: true })
  t.is(c.usage.completion_tokens, 16)
})

test.serial('stop as a string and as an array, seed, user and n: alone and together', async (t) => {
  const base = { model: MODEL, prompt: 'Once upon a time', max_tokens: 24, temperature: 1, seed: 11, ignore_eos: true }
  const text = async (extra) => (await client.completions.create({ ...base, ...extra })).choices.map((c) => c.text)
  const [free] = await text({})
  t.true(free.length > 4, free)
  // A stop string taken from the free text: the same cut whether sent as a string or in an array.
  const stop = free.slice(3, 5)
  const [asString] = await text({ stop })
  const [asArray] = await text({ stop: [stop] })
  t.is(asString, free.slice(0, free.indexOf(stop)))
  t.is(asArray, asString)
  const [withOther] = await text({ stop: ['\u0000never', stop] })
  t.is(withOther, asString)
  // seed: the same seed repeats, another differs; user changes nothing.
  t.deepEqual(await text({}), [free])
  t.notDeepEqual(await text({ seed: 12 }), [free])
  t.deepEqual(await text({ user: 'someone' }), [free])
  // n: choice i runs with seed + i, so choice 0 is the single answer and choice 1 the seed + 1 one.
  const [first, second] = await text({ n: 2 })
  t.is(first, free)
  t.deepEqual([second], await text({ seed: 12 }))
  const chat = await client.chat.completions.create({ model: MODEL, messages, max_completion_tokens: 6, n: 3, temperature: 1, seed: 4, user: 'u', ignore_eos: true })
  t.deepEqual(chat.choices.map((c) => c.index), [0, 1, 2])
  t.is(chat.usage.completion_tokens, 18)
})

test.serial("grammars are compiled off the caller's thread: the first (the vocabulary's trie) and a long choice list", async (t) => {
  const fresh = await loadTestRunner()
  try {
    // The first grammar builds the trie of Qwen3's 151,669 tokens (about a second); then ~200 KB of
    // alternatives (tens to hundreds of milliseconds), within llguidance's limits.
    for (const n of [2, 1024]) {
      const pattern = Array.from({ length: n }, (_, i) => `${'x'.repeat(200)}${i}`).join('|')
      const started = performance.now()
      const result = fresh.generate('x', { maxTokens: 1, grammar: { type: 'regex', pattern } })
      const returned = performance.now() - started
      await result
      const total = performance.now() - started
      // Compiled on the caller's thread, the call itself would take (nearly) all of it.
      t.true(returned < total / 4, `${n} choices: the call took ${returned.toFixed(0)} ms of ${total.toFixed(0)} ms`)
    }
  } finally {
    await fresh.dispose()
  }
})
