import { z } from 'zod'
import type { NativeGenerateResult } from './native.js'
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

// The result types come from the binding's Rust structs (index.d.ts): the one source of their fields.
export type { StreamChunk, Timings, TokenAlternative, TokenLogprob, Usage } from './native.js'

/** A finished generation (the binding's result, its finish reason narrowed, without the stream's chunk count). */
export type GenerateResult = Omit<NativeGenerateResult, 'finishReason' | 'chunkCount'> & { finishReason: FinishReason }
