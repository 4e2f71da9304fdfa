import { z } from 'zod'
import { parseOrThrow } from './validation.js'

// Types, keys and finiteness are checked here; ranges (topP <= 1, maxTokens >= 1, ...) in the engine,
// so Rust users get the same errors.
const num = () => z.number().finite('a finite number')
export const generationParamsSchema = z
  .object({
    maxTokens: num().optional(),
    temperature: num().optional(),
    topP: num().optional(),
    topK: num().optional(),
    minP: num().optional(),
    repetitionPenalty: num().optional(),
    presencePenalty: num().optional(),
    frequencyPenalty: num().optional(),
    seed: num().optional(),
    stop: z.union([z.string(), z.array(z.string())]).optional(),
    stopTokenIds: z.array(z.number().int().nonnegative()).optional(),
    ignoreEos: z.boolean().optional(),
    /** Token id -> bias added to its logit (-100..100). */
    logitBias: z.record(z.string().regex(/^\d+$/, 'a token id'), num()).optional(),
    /** Report each token's logprob and this many alternatives (0..20). */
    logprobs: num().optional(),
    /** Structured output: the text must match this grammar (enforced by token masks). */
    grammar: z
      .discriminatedUnion('type', [
        z.object({ type: z.literal('json_schema'), schema: z.union([z.record(z.unknown()), z.boolean()]) }).strict(),
        z.object({ type: z.literal('json_object') }).strict(),
        z.object({ type: z.literal('lark'), grammar: z.string() }).strict(),
        z.object({ type: z.literal('regex'), pattern: z.string() }).strict(),
      ])
      .optional(),
    signal: z.instanceof(AbortSignal).optional(),
  })
  .strict()

export type GenerationParams = z.input<typeof generationParamsSchema>

/** Split user params into the engine request (JSON) and the abort signal. */
export function toEngineRequest(params: GenerationParams | undefined): {
  request: Record<string, unknown>
  signal?: AbortSignal
} {
  const { signal, stop, ...rest } = parseOrThrow(generationParamsSchema, params ?? {}, 'params', 'INVALID_ARGUMENT')
  const request: Record<string, unknown> = { ...rest }
  if (stop !== undefined) request.stop = typeof stop === 'string' ? [stop] : stop
  return { request, signal }
}

export type FinishReason = 'stop' | 'length'

export interface Usage {
  promptTokens: number
  completionTokens: number
  totalTokens: number
  /** Prompt tokens whose KV came from the prefix cache (not computed for this request). */
  cachedTokens: number
}

export interface Timings {
  /** Submission to the first engine step that ran this request (waiting for a place in the batch). */
  queuedMs: number
  /** First step to the first token (the prompt's prefill, sharing steps with other requests). */
  prefillMs: number
  decodeMs: number
  prefillTokensPerSecond: number
  decodeTokensPerSecond: number
}

export interface GenerateResult {
  text: string
  tokenIds: number[]
  finishReason: FinishReason
  /** One per generated token, when `logprobs` was set. */
  logprobs?: TokenLogprob[]
  usage: Usage
  timings: Timings
}

/** A token and its log-probability under the model (before penalties, bias, grammar and temperature). */
export interface TokenAlternative {
  tokenId: number
  token: string
  bytes: number[]
  logprob: number
}

export interface TokenLogprob extends TokenAlternative {
  /** The most likely tokens at this step, most likely first. */
  top: TokenAlternative[]
}

export interface StreamChunk {
  text: string
  tokenIds: number[]
  /** One per token id, when `logprobs` was set. */
  logprobs?: TokenLogprob[]
}
