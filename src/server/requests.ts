/**
 * The OpenAI request bodies we accept, checked field by field (a bad field is a 400 that names it
 * and what is allowed), and their translation to the engine's generation params. Fields OpenAI
 * clients send that change nothing here (`user`, `store`, `metadata`, ...) are ignored, as vLLM does.
 */
import { z } from 'zod'
import type { GenerationParams } from '../params.js'
import { badRequest } from './http-error.js'
import { checkJsonDepth } from './json-bounds.js'

const stop = z.union([z.string().min(1), z.array(z.string().min(1)).max(16)]).nullish()
const int = (min: number, max: number) => z.number().int().min(min).max(max)

/** Sampling fields shared by both endpoints (OpenAI's, then the extra ones vLLM accepts). */
const sampling = {
  model: z.string().optional(),
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().optional(), continuous_usage_stats: z.boolean().optional() }).passthrough().nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  n: int(1, 16).nullish(),
  stop,
  seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).nullish(),
  presence_penalty: z.number().min(-2).max(2).nullish(),
  frequency_penalty: z.number().min(-2).max(2).nullish(),
  logit_bias: z
    .record(z.string().regex(/^\d+$/, 'token ids as decimal strings'), z.number().min(-100).max(100))
    .refine((m) => Object.keys(m).length <= 1024, 'at most 1024 tokens')
    .nullish(),
  top_k: z.number().int().min(-1).nullish(),
  min_p: z.number().min(0).max(1).nullish(),
  repetition_penalty: z.number().gt(0).nullish(),
  ignore_eos: z.boolean().nullish(),
  // vLLM's structured outputs (one of them; llguidance's Lark dialect for `grammar`).
  structured_outputs: z
    .object({
      json: z.union([z.record(z.unknown()), z.string()]).nullish(),
      regex: z.string().nullish(),
      choice: z.array(z.string()).min(1).max(1024).nullish(),
      grammar: z.string().nullish(),
    })
    .strict()
    .nullish(),
}

const message = z
  .object({
    role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
    content: z.union([z.string(), z.array(z.object({ type: z.literal('text'), text: z.string() }).passthrough()), z.null()]).optional(),
    reasoning_content: z.string().nullish(),
    tool_calls: z.array(z.unknown()).nullish(),
    tool_call_id: z.string().nullish(),
    name: z.string().nullish(),
  })
  .passthrough()

const functionTool = z.object({
  type: z.literal('function'),
  function: z
    .object({
      name: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'letters, digits, _ and -, up to 64'),
      description: z.string().optional(),
      parameters: z.record(z.unknown()).optional(),
      strict: z.boolean().nullish(),
    })
    .passthrough(),
})

export const chatRequestSchema = z
  .object({
    ...sampling,
    messages: z.array(message).min(1),
    max_tokens: int(1, 1 << 30).nullish(),
    max_completion_tokens: int(1, 1 << 30).nullish(),
    logprobs: z.boolean().nullish(),
    top_logprobs: int(0, 20).nullish(),
    tools: z.array(functionTool).max(128).nullish(),
    tool_choice: z
      .union([z.enum(['auto', 'none', 'required']), z.object({ type: z.literal('function'), function: z.object({ name: z.string() }) })])
      .nullish(),
    parallel_tool_calls: z.boolean().nullish(),
    response_format: z
      .discriminatedUnion('type', [
        z.object({ type: z.literal('text') }),
        z.object({ type: z.literal('json_object') }),
        z.object({
          type: z.literal('json_schema'),
          json_schema: z.object({ name: z.string(), schema: z.record(z.unknown()).optional(), strict: z.boolean().nullish(), description: z.string().optional() }),
        }),
      ])
      .nullish(),
    chat_template_kwargs: z.object({ enable_thinking: z.boolean().optional() }).passthrough().nullish(),
  })
  .passthrough()

export const completionRequestSchema = z
  .object({
    ...sampling,
    prompt: z.union([z.string(), z.array(z.string()).min(1), z.array(z.number().int().min(0)).min(1), z.array(z.array(z.number().int().min(0)).min(1)).min(1)]),
    max_tokens: int(1, 1 << 30).nullish(),
    logprobs: int(0, 5).nullish(),
    echo: z.boolean().nullish(),
    suffix: z.null().optional(),
    best_of: z.number().int().nullish(),
  })
  .passthrough()

export type ChatRequest = z.infer<typeof chatRequestSchema>
export type CompletionRequest = z.infer<typeof completionRequestSchema>

/** Parse, or a 400 naming the first bad field (with its path) and what it must be. */
export function parseBody<T>(schema: z.ZodType<T>, body: unknown): T {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw badRequest('the request body must be a JSON object')
  checkJsonDepth(body)
  const r = schema.safeParse(body)
  if (r.success) return r.data
  const issue = r.error.issues[0]
  const param = issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : p)).join('.').replace(/\.\[/g, '[')
  const got = issue.path.reduce<unknown>((v, k) => (v as Record<string | number, unknown> | undefined)?.[k], body)
  const shown = got === undefined ? 'missing' : JSON.stringify(got)?.slice(0, 80)
  throw badRequest(`invalid ${param || 'body'} = ${shown}: ${issue.message}`, param || null)
}

/** The engine's params for one OpenAI request (`logprobs`: alternatives per token, or undefined). */
export function generationParams(r: ChatRequest | CompletionRequest, maxTokens: number | undefined, logprobs: number | undefined): GenerationParams {
  const p: GenerationParams = {}
  if (maxTokens != null) p.maxTokens = maxTokens
  if (r.temperature != null) p.temperature = r.temperature
  if (r.top_p != null) p.topP = r.top_p
  if (r.top_k != null) p.topK = r.top_k === -1 ? 0 : r.top_k
  if (r.min_p != null) p.minP = r.min_p
  if (r.repetition_penalty != null) p.repetitionPenalty = r.repetition_penalty
  if (r.presence_penalty != null) p.presencePenalty = r.presence_penalty
  if (r.frequency_penalty != null) p.frequencyPenalty = r.frequency_penalty
  if (r.seed != null) p.seed = r.seed
  if (r.stop != null) p.stop = r.stop
  if (r.ignore_eos != null) p.ignoreEos = r.ignore_eos
  if (r.logit_bias != null) p.logitBias = r.logit_bias
  if (logprobs != null) p.logprobs = logprobs
  return p
}
