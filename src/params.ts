import { z } from 'zod'
import { parseOrThrow } from './validation.js'

// Types and keys are checked here; ranges (topP <= 1, maxTokens >= 1, ...) in the engine, so Rust
// users get the same errors.
export const generationParamsSchema = z
  .object({
    maxTokens: z.number().optional(),
    temperature: z.number().optional(),
    topP: z.number().optional(),
    topK: z.number().optional(),
    minP: z.number().optional(),
    repetitionPenalty: z.number().optional(),
    presencePenalty: z.number().optional(),
    frequencyPenalty: z.number().optional(),
    seed: z.number().optional(),
    stop: z.union([z.string(), z.array(z.string())]).optional(),
    stopTokenIds: z.array(z.number().int().nonnegative()).optional(),
    ignoreEos: z.boolean().optional(),
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
  usage: Usage
  timings: Timings
}

export interface StreamChunk {
  text: string
  tokenIds: number[]
}
