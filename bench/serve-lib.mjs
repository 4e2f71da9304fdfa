// The serving measurements, shared by bench/serve-engine.mjs (this engine) and bench/serve-llama.mjs
// (llama.cpp through node-llama-cpp), so both are timed by exactly the same code. Each engine supplies
// one function:
//   stream(promptIds, maxTokens, onTokens(count, nowMs)) -> Promise<{ completionTokens }>
// which generates greedily with EOS ignored and calls onTokens once per streamed chunk that carries
// tokens (count = the tokens in that chunk; llama.cpp streams one token at a time, this engine usually
// does too, except where a chunk waits for the rest of a UTF-8 character).
//
// Definitions (all times from performance.now(), in the process that makes the requests):
//   TTFT       submission of the request -> its first token-carrying chunk.
//   ITL        the gaps between consecutive token-carrying chunks of one stream, pooled over all
//              streams (as vLLM's benchmark_serving: a chunk with two tokens is one gap, not split).
//   TPOT       per stream, (last chunk - first chunk) / (tokens - 1).
//   decode tok/s (aggregate)  sum over streams of (tokens - 1), i.e. every token after each stream's
//              first, / (last chunk of any stream - first chunk of any stream).
//   end-to-end tok/s          all generated tokens / (last chunk of any stream - submission).

/** Fixed, varied token ids as in engine-bench.mjs; `seed` makes prompts distinct from the first token on. */
export const ids = (n, seed = 0) => Array.from({ length: n }, (_, i) => 1000 + ((i * 7919 + seed * 104729) % 100000))

export function percentile(xs, p) {
  if (!xs.length) return undefined
  const s = [...xs].sort((a, b) => a - b)
  // Nearest rank.
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]
}

const mean = (xs) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : undefined)

/** Starts one request now and records its chunk times. */
function track(stream, promptIds, maxTokens, onEach) {
  const rec = { submitted: performance.now(), times: [], counts: [], tokens: 0 }
  rec.done = stream(promptIds, maxTokens, (count, now) => {
    rec.times.push(now)
    rec.counts.push(count)
    rec.tokens += count
    onEach?.(rec)
  }).then((r) => {
    rec.completionTokens = r?.completionTokens ?? rec.tokens
    rec.finished = performance.now()
  })
  return rec
}

/**
 * About how many streams got a token per engine step: chunk arrivals of all streams, sorted, grouped
 * where consecutive arrivals are less than a quarter of the median inter-token gap apart; tokens per
 * group, averaged over the groups after every stream's first token. 1 when requests take turns, N when
 * N streams decode in one batch.
 */
function tokensPerStep(recs, itlP50) {
  if (!itlP50) return undefined
  const start = Math.max(...recs.map((r) => r.times[0]))
  const events = recs.flatMap((r) => r.times.map((t, i) => [t, r.counts[i]])).filter(([t]) => t > start).sort((a, b) => a[0] - b[0])
  if (!events.length) return undefined
  let groups = 1
  for (let i = 1; i < events.length; i++) if (events[i][0] - events[i - 1][0] >= itlP50 / 4) groups++
  return events.reduce((a, [, c]) => a + c, 0) / groups
}

const gapsOf = (rec) => rec.times.slice(1).map((t, i) => t - rec.times[i])

/** The figures of a set of concurrent streams submitted at `t0`. */
function summarize(recs, t0) {
  const firsts = recs.map((r) => r.times[0])
  const lasts = recs.map((r) => r.times.at(-1))
  const itl = recs.flatMap(gapsOf)
  const ttft = recs.map((r) => r.times[0] - r.submitted)
  const tpot = recs.filter((r) => r.tokens > 1).map((r) => (r.times.at(-1) - r.times[0]) / (r.tokens - 1))
  const generated = recs.reduce((a, r) => a + r.tokens, 0)
  const decodeWindow = Math.max(...lasts) - Math.min(...firsts)
  return {
    streams: recs.length,
    generatedTokens: generated,
    tokensPerStream: [Math.min(...recs.map((r) => r.tokens)), Math.max(...recs.map((r) => r.tokens))],
    chunks: recs.reduce((a, r) => a + r.times.length, 0),
    wallMs: Math.max(...lasts) - t0,
    decodeWindowMs: decodeWindow,
    decodeTokensPerSecond: decodeWindow > 0 ? ((generated - recs.length) * 1000) / decodeWindow : undefined,
    endToEndTokensPerSecond: (generated * 1000) / (Math.max(...lasts) - t0),
    itlP50Ms: percentile(itl, 50),
    itlP99Ms: percentile(itl, 99),
    itlMaxMs: itl.length ? Math.max(...itl) : undefined,
    itlSamples: itl.length,
    tpotMeanMs: mean(tpot),
    tokensPerStep: tokensPerStep(recs, percentile(itl, 50)),
    ttftP50Ms: percentile(ttft, 50),
    ttftP99Ms: percentile(ttft, 99),
    ttftMaxMs: Math.max(...ttft),
    // SERVE_RAW=1: every stream's chunk times (ms from submission) and tokens per chunk.
    ...(process.env.SERVE_RAW === '1' ? { raw: recs.map((r) => ({ times: r.times.map((t) => +(t - t0).toFixed(2)), counts: r.counts })) } : {}),
  }
}

async function runConcurrent(stream, { streams, promptTokens, newTokens, seedBase }) {
  const t0 = performance.now()
  const recs = []
  // All requests are submitted in the same tick.
  for (let s = 0; s < streams; s++) recs.push(track(stream, ids(promptTokens, seedBase + s), newTokens))
  await Promise.all(recs.map((r) => r.done))
  return summarize(recs, t0)
}

/** A short request on a prompt no measurement uses: threads, caches and lazy init warmed up. */
export async function warmUp(stream) {
  const r = track(stream, ids(16, 9999), 4)
  await r.done
}

/** Scenario 1: N concurrent streams, each a distinct prompt. */
export async function concurrency(stream, { streams, promptTokens = 32, newTokens = 128 }) {
  await warmUp(stream)
  return { scenario: 'concurrency', promptTokens, newTokens, ...(await runConcurrent(stream, { streams, promptTokens, newTokens, seedBase: 1 })) }
}

/**
 * Scenario 2: TTFT behind a shared prefix. For each repeat, a fresh prefix: the first request with it
 * (cold), then a second request with the same prefix and another suffix (cached). Sequential requests.
 */
export async function prefix(stream, { prefixTokens = 1024, suffixTokens = 16, newTokens = 4, repeats = 2 }) {
  await warmUp(stream)
  const pairs = []
  for (let k = 0; k < repeats; k++) {
    const shared = ids(prefixTokens, 500 + k)
    const ttft = []
    for (const suffixSeed of [600 + 2 * k, 601 + 2 * k]) {
      const r = track(stream, [...shared, ...ids(suffixTokens, suffixSeed)], newTokens)
      await r.done
      ttft.push(r.times[0] - r.submitted)
    }
    pairs.push({ coldTtftMs: ttft[0], cachedTtftMs: ttft[1] })
  }
  const cold = mean(pairs.map((p) => p.coldTtftMs))
  const cached = mean(pairs.map((p) => p.cachedTtftMs))
  return { scenario: 'prefix', prefixTokens, suffixTokens, newTokens, pairs, coldTtftMs: cold, cachedTtftMs: cached, coldOverCached: cold / cached }
}

/**
 * Scenario 3: `streams` running streams; once they have produced a few tokens (each at least
 * `afterTokens`, or `streams * afterTokens` in all, for an engine that serves them in turn), one
 * request with a `longPromptTokens` prompt is submitted. Measured against the same streams unloaded
 * (run first, on other prompts). The admission window is from that submission to the long request's
 * first token; window ITL pools the gaps of the running streams that overlap it.
 */
export async function admission(stream, { streams = 8, promptTokens = 32, newTokens = 128, longPromptTokens = 2048, longNewTokens = 4, afterTokens = 4 }) {
  await warmUp(stream)
  const unloaded = await runConcurrent(stream, { streams, promptTokens, newTokens, seedBase: 100 })

  const t0 = performance.now()
  const recs = []
  let long
  const maybeAdmit = () => {
    if (long) return
    const total = recs.reduce((a, r) => a + r.tokens, 0)
    if (recs.length === streams && (recs.every((r) => r.tokens >= afterTokens) || total >= streams * afterTokens)) {
      long = track(stream, ids(longPromptTokens, 300), longNewTokens)
    }
  }
  for (let s = 0; s < streams; s++) recs.push(track(stream, ids(promptTokens, 200 + s), newTokens, maybeAdmit))
  await Promise.all(recs.map((r) => r.done))
  if (!long) long = track(stream, ids(longPromptTokens, 300), longNewTokens) // streams too short to admit it mid-way
  await long.done
  const loaded = summarize(recs, t0)
  const windowStart = long.submitted
  const windowEnd = long.times[0]
  const windowGaps = recs.flatMap((r) => r.times.slice(1).flatMap((t, i) => (t > windowStart && r.times[i] < windowEnd ? [t - r.times[i]] : [])))
  const streamTokensAtSubmit = recs.map((r) => r.times.filter((t) => t <= windowStart).length)
  Object.assign(loaded, {
    longPromptTokens,
    longTtftMs: windowEnd - windowStart,
    submittedAfterChunks: [Math.min(...streamTokensAtSubmit), Math.max(...streamTokensAtSubmit)],
    windowItlP50Ms: percentile(windowGaps, 50),
    windowItlP99Ms: percentile(windowGaps, 99),
    windowItlMaxMs: windowGaps.length ? Math.max(...windowGaps) : undefined,
    windowItlSamples: windowGaps.length,
  })
  return {
    scenario: 'admission',
    streams,
    promptTokens,
    newTokens,
    longPromptTokens,
    unloaded,
    loaded,
    // Loaded / unloaded ITL p99: over every gap of the 8 streams, and over the admission window only.
    itlP99Ratio: loaded.itlP99Ms / unloaded.itlP99Ms,
    windowItlP99Ratio: loaded.windowItlP99Ms / unloaded.itlP99Ms,
  }
}

export async function runScenario(stream, name, opts) {
  if (name === 'concurrency') return concurrency(stream, opts)
  if (name === 'prefix') return prefix(stream, { prefixTokens: opts.prefixTokens })
  if (name === 'admission') return admission(stream, { promptTokens: opts.promptTokens, newTokens: opts.newTokens, longPromptTokens: opts.longPromptTokens, streams: opts.streams })
  throw new Error(`unknown scenario ${name}`)
}

/** Command-line options common to both engines' child scripts. */
export const scenarioOptions = {
  scenario: { type: 'string', default: 'concurrency' },
  threads: { type: 'string', default: '2' },
  streams: { type: 'string', default: '1' },
  'prompt-tokens': { type: 'string', default: '32' },
  'new-tokens': { type: 'string', default: '128' },
  'prefix-tokens': { type: 'string', default: '1024' },
  'long-prompt-tokens': { type: 'string', default: '2048' },
}

export function scenarioParams(o) {
  return {
    streams: Number(o.streams),
    promptTokens: Number(o['prompt-tokens']),
    newTokens: Number(o['new-tokens']),
    prefixTokens: Number(o['prefix-tokens']),
    longPromptTokens: Number(o['long-prompt-tokens']),
  }
}
