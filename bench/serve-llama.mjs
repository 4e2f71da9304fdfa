// The peer of bench/serve-engine.mjs: llama.cpp through node-llama-cpp on the GGUF of the same weights,
// in its own process. ONE model, ONE context with one sequence per concurrent stream; each stream is
// context.getSequence() + sequence.evaluate(promptTokens, { temperature: 0 }), the lowest-level
// generating API. node-llama-cpp queues the pending evaluations of all sequences of a context and
// decodes what is queued together, in one llama_decode batch (batchSize tokens at most, shared out by
// its default "maximumParallelism" strategy).
//
// Left alone, that batching is incomplete: sampling is asynchronous per sequence, and node-llama-cpp's
// batch loop starts the next batch as soon as it finds anything queued, i.e. before the sequence
// sampled last has queued its next token; so that sequence misses the batch (2 streams alternate in
// single-token batches, 4 streams decode about 3 at a time). So by default the streams go in lockstep,
// as llama.cpp's own server (llama-server) schedules its slots: one round per llama_decode, in which
// every decoding stream submits one token and a stream still in its prompt submits the next chunk of it
// (batchSize minus the decoding streams, shared among the prompts); the round ends when every item is
// back, and the next round starts on the next event-loop turn, when node-llama-cpp's loop is idle.
// SERVE_PEER_LOCKSTEP=0 measures node-llama-cpp's own scheduling instead.
//   node bench/serve-llama.mjs --gguf FILE --threads 2 --scenario concurrency --streams 8
// SERVE_PEER_BATCH_SIZE (default 512, node-llama-cpp's default) sets the context's batchSize.
// Prints one JSON line.
import { parseArgs } from 'node:util'
import { getLlama } from 'node-llama-cpp'
import { runScenario, scenarioOptions, scenarioParams } from './serve-lib.mjs'

const { values: o } = parseArgs({ options: { gguf: { type: 'string' }, ...scenarioOptions } })
const p = scenarioParams(o)
const threads = Number(o.threads)
if (o.scenario === 'prefix') throw new Error('the prefix scenario is measured for this engine only')
const lockstep = process.env.SERVE_PEER_LOCKSTEP !== '0'

// Sequences and per-sequence context (node-llama-cpp's contextSize is per sequence: the KV cache holds
// contextSize x sequences cells). The admission scenario has one more request, with the long prompt.
const longest = o.scenario === 'admission' ? Math.max(p.longPromptTokens + 4, p.promptTokens + p.newTokens) : p.promptTokens + p.newTokens
const sequences = o.scenario === 'admission' ? p.streams + 1 : p.streams
const batchSize = Number(process.env.SERVE_PEER_BATCH_SIZE ?? 512)

const llama = await getLlama({ gpu: false, logLevel: 'error' })
const t0 = performance.now()
const model = await llama.loadModel({ modelPath: o.gguf, gpuLayers: 0 })
const context = await model.createContext({ contextSize: longest + 16, threads, batchSize, sequences })
const loadMs = performance.now() - t0

// yieldEogToken: an end-of-generation token is streamed like any other and generation goes on (EOS ignored).
const evaluateOptions = { temperature: 0, yieldEogToken: true }

/** node-llama-cpp's own scheduling: each stream iterates its sequence.evaluate() freely. */
async function plainStream(promptIds, maxTokens, onTokens) {
  const seq = context.getSequence()
  let n = 0
  try {
    for await (const _ of seq.evaluate(promptIds, evaluateOptions)) {
      onTokens(1, performance.now())
      if (++n >= maxTokens) break
    }
  } finally {
    await seq.dispose()
  }
  return { completionTokens: n }
}

/** Rounds: every member submits one item, the round ends when all are back (see the top of the file). */
class Lockstep {
  members = new Map() // id -> { decoding, arrived, release }
  pending = [] // streams waiting for the next round to start
  scheduled = false
  /** A new stream; resolves with its prompt budget for the round it first takes part in. */
  join(id) {
    return new Promise((release) => {
      this.pending.push({ id, release })
      this.schedule()
    })
  }
  /** The stream's item of this round is back; resolves with its budget for the next round. */
  arrive(id, decoding) {
    const m = this.members.get(id)
    return new Promise((release) => {
      Object.assign(m, { decoding, arrived: true, release })
      this.schedule()
    })
  }
  leave(id) {
    this.members.delete(id)
    this.schedule()
  }
  // On the next event-loop turn: by then node-llama-cpp's batch loop has seen an empty queue and stopped.
  schedule() {
    if (this.scheduled) return
    this.scheduled = true
    setImmediate(() => {
      this.scheduled = false
      for (const m of this.members.values()) if (!m.arrived) return // the round is still running
      const all = [...this.members.values()]
      const decoders = all.filter((m) => m.decoding).length
      const prefillers = all.length - decoders + this.pending.length
      const budget = Math.max(1, Math.floor((batchSize - decoders) / Math.max(1, prefillers)))
      for (const m of all) {
        m.arrived = false
        m.release(budget)
      }
      for (const { id, release } of this.pending.splice(0)) {
        this.members.set(id, { decoding: false, arrived: false })
        release(budget)
      }
    })
  }
}
const rounds = new Lockstep()
let nextId = 0

async function lockstepStream(promptIds, maxTokens, onTokens) {
  const id = nextId++
  const seq = context.getSequence()
  let n = 0
  try {
    let budget = await rounds.join(id)
    let rest = promptIds
    // A prompt longer than this round's budget: one chunk per round, without sampling.
    while (rest.length > budget) {
      await seq.evaluateWithoutGeneratingNewTokens(rest.slice(0, budget))
      rest = rest.slice(budget)
      budget = await rounds.arrive(id, false)
    }
    const it = seq.evaluate(rest, evaluateOptions)
    for (;;) {
      const r = await it.next()
      if (r.done) break
      onTokens(1, performance.now())
      if (++n >= maxTokens) break
      await rounds.arrive(id, true)
    }
    await it.return()
  } finally {
    rounds.leave(id)
    await seq.dispose()
  }
  return { completionTokens: n }
}

const result = await runScenario(lockstep ? lockstepStream : plainStream, o.scenario, p)
console.log(
  JSON.stringify({
    engine: 'node-llama-cpp',
    gguf: o.gguf,
    threads,
    scheduling: lockstep ? 'lockstep rounds (llama-server-like)' : "node-llama-cpp's own",
    contextSizePerSequence: context.contextSize,
    sequences,
    batchSize,
    loadMs,
    ...result,
    peakRssMb: process.resourceUsage().maxRSS / 1024,
  }),
)
await context.dispose()
await model.dispose()
