/** One choice of one request through the runner, timed for /metrics; shared by both endpoints. */
import { randomBytes } from 'node:crypto'
import type { ModelRunner } from '../model-runner.js'
import type { GenerateResult, GenerationParams, StreamChunk, TokenAlternative, TokenLogprob } from '../params.js'
import type { Metrics } from './metrics.js'

export const newId = (prefix: string) => `${prefix}-${randomBytes(12).toString('hex')}`

export async function runChoice(
  runner: ModelRunner,
  prompt: string | number[],
  params: GenerationParams,
  ctx: { signal: AbortSignal; metrics: Metrics; started: number },
  onChunk: (c: StreamChunk) => void,
): Promise<GenerateResult> {
  const s = runner.stream(prompt, { ...params, signal: ctx.signal })
  let last = 0
  for await (const c of s) {
    const now = performance.now()
    if (!last) ctx.metrics.firstToken((now - ctx.started) / 1000)
    else ctx.metrics.interToken((now - last) / 1000, c.tokenIds.length)
    last = now
    onChunk(c)
  }
  const r = await s.result
  ctx.metrics.finished(r.finishReason, r.usage.promptTokens, r.usage.completionTokens, (performance.now() - ctx.started) / 1000)
  return r
}

/** Several choices' usage, summed as OpenAI reports it (the prompt counted once). */
export function totalUsage(results: GenerateResult[]) {
  const prompt = results[0]?.usage.promptTokens ?? 0
  const completion = results.reduce((n, r) => n + r.usage.completionTokens, 0)
  const cached = results[0]?.usage.cachedTokens ?? 0
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion, prompt_tokens_details: { cached_tokens: cached } }
}

const alt = (a: TokenAlternative) => ({ token: a.token, logprob: a.logprob, bytes: a.bytes })

/** Chat's logprobs shape: `{ content: [{ token, logprob, bytes, top_logprobs }] }`. */
export function chatLogprobs(lp: TokenLogprob[] | undefined) {
  return lp ? { content: lp.map((t) => ({ ...alt(t), top_logprobs: t.top.map(alt) })) } : null
}

/** Seeds for n choices: seed, seed + 1, ... so each choice differs and all repeat. */
export function choiceParams(params: GenerationParams, n: number): GenerationParams[] {
  return Array.from({ length: n }, (_, i) => (params.seed != null && i > 0 ? { ...params, seed: params.seed + i } : params))
}

/**
 * The `usage` field of streamed chunks: absent, `null` until the last chunk (`include_usage`), or
 * with `continuous_usage_stats` (vLLM's extension) the tokens so far in every chunk.
 */
export class StreamUsage {
  private completion = 0

  constructor(
    private mode: 'none' | 'final' | 'continuous',
    private promptTokens: number,
  ) {}

  static of(options: { include_usage?: boolean; continuous_usage_stats?: boolean } | null | undefined, promptTokens: () => number) {
    if (options?.continuous_usage_stats) return new StreamUsage('continuous', promptTokens())
    return new StreamUsage(options?.include_usage ? 'final' : 'none', 0)
  }

  get final(): boolean {
    return this.mode !== 'none'
  }

  add(tokens: number) {
    this.completion += tokens
  }

  field(): { usage?: unknown } {
    if (this.mode === 'none') return {}
    if (this.mode === 'final') return { usage: null }
    return { usage: { prompt_tokens: this.promptTokens, completion_tokens: this.completion, total_tokens: this.promptTokens + this.completion } }
  }
}
