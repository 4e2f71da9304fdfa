// One serving configuration of this engine, in its own process: ONE ModelRunner, N concurrent
// runner.stream() calls (see bench/serve-lib.mjs for the scenarios and what is measured).
//   node bench/serve-engine.mjs --model DIR --quantization dynamic_int8 --threads 2 --scenario concurrency --streams 8
// --http: the same streams through the OpenAI-compatible server on 127.0.0.1 (streaming
// /v1/completions with token prompts; tokens per event from vLLM's continuous usage stats).
// Serving load options, passed only when their variable is set (a build without them rejects them):
//   SERVE_KV_CACHE_MEMORY (bytes) -> kvCacheMemory, SERVE_MAX_BATCH_TOKENS -> maxBatchTokens,
//   SERVE_MAX_CONCURRENT_SEQUENCES -> maxConcurrentSequences, SERVE_ENABLE_PREFIX_CACHING=1|0 -> enablePrefixCaching.
// The prefix scenario asks for enablePrefixCaching: true when SERVE_ENABLE_PREFIX_CACHING is unset, and
// loads without it if this build does not know the option (reported as prefixCaching: 'unsupported').
// Prints one JSON line.
import { parseArgs } from 'node:util'
import { createServer, ModelRunner } from '../dist/index.mjs'
import { runScenario, scenarioOptions, scenarioParams } from './serve-lib.mjs'

const { values: o } = parseArgs({
  options: { model: { type: 'string' }, quantization: { type: 'string', default: 'dynamic_int8' }, http: { type: 'boolean' }, ...scenarioOptions },
})

const env = process.env
const serving = {}
if (env.SERVE_KV_CACHE_MEMORY) serving.kvCacheMemory = Number(env.SERVE_KV_CACHE_MEMORY)
if (env.SERVE_MAX_BATCH_TOKENS) serving.maxBatchTokens = Number(env.SERVE_MAX_BATCH_TOKENS)
if (env.SERVE_MAX_CONCURRENT_SEQUENCES) serving.maxConcurrentSequences = Number(env.SERVE_MAX_CONCURRENT_SEQUENCES)
if (env.SERVE_ENABLE_PREFIX_CACHING) serving.enablePrefixCaching = !['0', 'false'].includes(env.SERVE_ENABLE_PREFIX_CACHING)

const base = {
  modelName: o.model,
  threads: Number(o.threads),
  accelerationConfig: { quantization: o.quantization },
  onLoadProgress: false,
}
const t0 = performance.now()
let runner
let prefixCaching = serving.enablePrefixCaching
if (o.scenario === 'prefix' && prefixCaching === undefined) {
  try {
    runner = await ModelRunner.load({ ...base, ...serving, enablePrefixCaching: true })
    prefixCaching = true
  } catch (e) {
    if (!/enablePrefixCaching|unrecognized/i.test(String(e?.message ?? e))) throw e
    console.error('this build does not take enablePrefixCaching; measuring without it')
    prefixCaching = 'unsupported'
  }
}
runner ??= await ModelRunner.load({ ...base, ...serving })
const loadMs = performance.now() - t0

const inProcess = async (promptIds, maxTokens, onTokens) => {
  const s = runner.stream(promptIds, { maxTokens, ignoreEos: true, temperature: 0 })
  for await (const c of s) if (c.tokenIds.length) onTokens(c.tokenIds.length, performance.now())
  const r = await s.result
  return { completionTokens: r.usage.completionTokens }
}

const server = o.http ? await createServer({ runner, port: 0, servedModelName: 'bench' }) : undefined
/** Streaming /v1/completions; continuous usage stats (vLLM's extension) give each event's token count. */
const overHttp = async (promptIds, maxTokens, onTokens) => {
  const body = { model: 'bench', prompt: promptIds, max_tokens: maxTokens, ignore_eos: true, temperature: 0, stream: true, stream_options: { include_usage: true, continuous_usage_stats: true } }
  const res = await fetch(`${server.baseURL}/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  const decoder = new TextDecoder()
  let buffer = ''
  let completionTokens = 0
  for await (const bytes of res.body) {
    buffer += decoder.decode(bytes, { stream: true })
    let end
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end)
      buffer = buffer.slice(end + 2)
      if (!event.startsWith('data: {')) continue
      const chunk = JSON.parse(event.slice(6))
      const n = (chunk.usage?.completion_tokens ?? completionTokens) - completionTokens
      if (n > 0 && chunk.choices.length) onTokens(n, performance.now())
      if (chunk.usage) completionTokens = chunk.usage.completion_tokens
    }
  }
  return { completionTokens }
}
const stream = o.http ? overHttp : inProcess

const result = await runScenario(stream, o.scenario, scenarioParams(o))
console.log(
  JSON.stringify({
    engine: o.http ? 'nano-qwen3-serving (HTTP)' : 'nano-qwen3-serving',
    quantization: o.quantization,
    weightDtype: runner.getModelInfo().dtype,
    threads: Number(o.threads),
    serving,
    ...(o.scenario === 'prefix' ? { prefixCaching } : {}),
    loadMs,
    ...result,
    peakRssMb: process.resourceUsage().maxRSS / 1024,
  }),
)
await server?.close()
await runner.dispose()
