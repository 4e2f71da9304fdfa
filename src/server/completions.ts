/** POST /v1/completions: string or token prompts (one or many), streaming, logprobs, echo. */
import type { FastifyReply } from 'fastify'
import type { GenerateResult, TokenLogprob } from '../params.js'
import type { RequestContext } from './chat-completions.js'
import { completionConstraint, type Constraint, fromField } from './constraints.js'
import { choiceParams, newId, runChoice, StreamUsage, totalUsage } from './generation.js'
import { badRequest, errorBody, toHttpError } from './http-error.js'
import { type CompletionRequest, generationParams } from './requests.js'
import { SseWriter } from './sse.js'

/** OpenAI's legacy completions default. */
const DEFAULT_MAX_TOKENS = 16

interface LegacyLogprobs {
  tokens: string[]
  token_logprobs: (number | null)[]
  top_logprobs: (Record<string, number> | null)[]
  text_offset: number[]
}

function legacyLogprobs(lp: TokenLogprob[], offset: number): LegacyLogprobs {
  const out: LegacyLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] }
  for (const t of lp) {
    out.tokens.push(t.token)
    out.token_logprobs.push(t.logprob)
    out.top_logprobs.push(Object.fromEntries(t.top.map((a) => [a.token, a.logprob])))
    out.text_offset.push(offset)
    offset += t.token.length
  }
  return out
}

/** The k largest entries' indices, largest first (k <= 5: one pass with a small sorted list). */
function topIds(row: Float32Array, k: number): number[] {
  const best: number[] = []
  for (let i = 0; i < row.length; i++) {
    if (best.length === k && row[i] <= row[best[k - 1]]) continue
    let j = best.length === k ? k - 1 : best.length
    while (j > 0 && row[best[j - 1]] < row[i]) j--
    best.splice(j, 0, i)
    if (best.length > k) best.pop()
  }
  return best
}

/** Prompts longer than this get no echoed logprobs: all positions' logits are held at once. */
export const MAX_ECHO_LOGPROBS_TOKENS = 512

/** The prompt's own logprobs for `echo` (the first token has none), from one forward pass. */
async function promptLogprobs(ctx: RequestContext, ids: number[], top: number): Promise<LegacyLogprobs> {
  const vocab = (ctx.runner.getModelInfo() as Record<string, unknown>).vocabSize as number
  const logits = await ctx.runner.computeLogits(ids, { allPositions: true })
  const rows = logits.length / ids.length
  const out: LegacyLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] }
  let offset = 0
  ids.forEach((id, i) => {
    const token = ctx.runner.detokenize([id])
    out.tokens.push(token)
    out.text_offset.push(offset)
    offset += token.length
    if (i === 0) {
      out.token_logprobs.push(null)
      out.top_logprobs.push(null)
      return
    }
    const row = logits.subarray((i - 1) * rows, (i - 1) * rows + vocab)
    let max = -Infinity
    for (const v of row) if (v > max) max = v
    let sum = 0
    for (const v of row) sum += Math.exp(v - max)
    const norm = max + Math.log(sum)
    out.token_logprobs.push(row[id] - norm)
    const best = topIds(row, top)
    out.top_logprobs.push(Object.fromEntries(best.map((b) => [ctx.runner.detokenize([b]), row[b] - norm])))
  })
  return out
}

function prompts(r: CompletionRequest): (string | number[])[] {
  const p = r.prompt
  if (typeof p === 'string') return [p]
  if (p.every((x) => typeof x === 'number')) return [p as number[]]
  return p as (string | number[])[]
}

export async function completions(r: CompletionRequest, ctx: RequestContext, reply: FastifyReply, send: (body: unknown) => void) {
  const constraint = completionConstraint(r, ctx.strictSchemas)
  try {
    await respond(r, ctx, reply, send, constraint)
  } catch (e) {
    throw fromField(e, constraint)
  }
}

async function respond(r: CompletionRequest, ctx: RequestContext, reply: FastifyReply, send: (body: unknown) => void, constraint: Constraint | undefined) {
  if (r.best_of != null && r.best_of !== (r.n ?? 1)) throw badRequest(`invalid best_of = ${r.best_of}: only best_of = n is supported`, 'best_of')
  const list = prompts(r)
  const n = r.n ?? 1
  const params = { ...generationParams(r, r.max_tokens ?? DEFAULT_MAX_TOKENS, r.logprobs ?? undefined), grammar: constraint?.grammar }
  const id = newId('cmpl')
  const created = Math.floor(Date.now() / 1000)
  const base = { id, object: 'text_completion', created, model: ctx.modelName, system_fingerprint: null }
  const jobs = list.flatMap((prompt, pi) => choiceParams(params, n).map((p, j) => ({ prompt, p, index: pi * n + j })))
  const echoText = (prompt: string | number[]) => (typeof prompt === 'string' ? prompt : ctx.runner.detokenize(prompt))
  /** Usage over every prompt: each prompt's tokens once, every choice's completion. */
  const usageOf = (results: GenerateResult[]) => {
    const u = totalUsage(results)
    u.prompt_tokens = list.reduce((s, _, pi) => s + results[pi * n].usage.promptTokens, 0)
    u.total_tokens = u.prompt_tokens + u.completion_tokens
    return u
  }
  const ids = (prompt: string | number[]) => (typeof prompt === 'string' ? ctx.runner.tokenize(prompt) : prompt)
  if (r.echo && r.logprobs != null) {
    const longest = Math.max(...list.map((p) => ids(p).length))
    if (longest > MAX_ECHO_LOGPROBS_TOKENS) {
      throw badRequest(`invalid echo with logprobs for a ${longest}-token prompt: at most ${MAX_ECHO_LOGPROBS_TOKENS} prompt tokens`, 'echo')
    }
  }

  if (!r.stream) {
    const results: GenerateResult[] = await Promise.all(jobs.map((j) => runChoice(ctx.runner, j.prompt, j.p, ctx, () => {})))
    const choices = await Promise.all(
      results.map(async (res, k) => {
        const { prompt, index } = jobs[k]
        const head = r.echo ? echoText(prompt) : ''
        let logprobs: LegacyLogprobs | null = null
        if (r.logprobs != null) {
          const gen = legacyLogprobs(res.logprobs ?? [], head.length)
          if (r.echo) {
            const pl = await promptLogprobs(ctx, ids(prompt), r.logprobs)
            logprobs = { tokens: [...pl.tokens, ...gen.tokens], token_logprobs: [...pl.token_logprobs, ...gen.token_logprobs], top_logprobs: [...pl.top_logprobs, ...gen.top_logprobs], text_offset: [...pl.text_offset, ...gen.text_offset] }
          } else logprobs = gen
        }
        return { text: head + res.text, index, logprobs, finish_reason: res.finishReason }
      }),
    )
    send({ ...base, choices, usage: usageOf(results) })
    return
  }

  const sse = new SseWriter(reply)
  const usage = StreamUsage.of(r.stream_options, () => list.reduce((s: number, p) => s + ids(p).length, 0))
  const chunk = (choice: unknown) => sse.send({ ...base, choices: [choice], ...usage.field() })
  try {
    const results = await Promise.all(
      jobs.map(async ({ prompt, p, index }) => {
        let offset = 0
        if (r.echo) {
          const head = echoText(prompt)
          offset = head.length
          chunk({ text: head, index, logprobs: null, finish_reason: null })
        }
        const res = await runChoice(ctx.runner, prompt, p, ctx, (c) => {
          usage.add(c.tokenIds.length)
          const logprobs = c.logprobs ? legacyLogprobs(c.logprobs, offset) : null
          offset += c.text.length
          chunk({ text: c.text, index, logprobs, finish_reason: null })
        })
        chunk({ text: '', index, logprobs: null, finish_reason: res.finishReason })
        return res
      }),
    )
    if (usage.final) sse.send({ ...base, choices: [], usage: usageOf(results) })
    sse.end()
  } catch (e) {
    const clientGone = ctx.signal.aborted && !ctx.failed
    ctx.abort() // the other choices of a failed request
    // Once events have gone out the status is sent: the error becomes the last event.
    if (!sse.end(clientGone ? undefined : errorBody(toHttpError(e)))) throw e
  }
}
