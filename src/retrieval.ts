// Embeddings and reranking through the native engine: inputs checked here (shapes), limits and
// tokens checked by the engine; each call's sequences share engine steps with everything else.
import { z } from 'zod'
import { AbortError, fromNative } from './errors.js'
import type { NativeEngine } from './native.js'
import { parseOrThrow } from './validation.js'

export interface EmbedOptions {
  /** The task of a query: embeds `Instruct: {instruction}\nQuery:{text}` (Qwen3-Embedding's model card). Documents go without. */
  instruction?: string
  /** Keep the first `dimensions` values (Matryoshka), before normalising: 1 ..= the hidden size. */
  dimensions?: number
  /** L2-normalise (default true). */
  normalize?: boolean
  signal?: AbortSignal
}

export interface EmbedOutput {
  embeddings: Float32Array[]
  /** Tokens of all inputs together (instruction and appended EOS included). */
  promptTokens: number
}

export interface RerankOptions {
  /** The task (default: "Given a web search query, retrieve relevant passages that answer the query"). */
  instruction?: string
  /** Keep the best `topN` (default all). */
  topN?: number
  signal?: AbortSignal
}

export interface RerankItem {
  /** The document's position in `documents`. */
  index: number
  /** P("yes") against "no" at the last position of Qwen3-Reranker's template, in [0, 1]. */
  score: number
}

export interface RerankOutput {
  /** Best first; equal scores keep the documents' order. */
  results: RerankItem[]
  promptTokens: number
}

const tokenIds = z.array(z.number().int().min(0).max(2 ** 32 - 1))
/** A text, token ids, or a list of either (OpenAI's `input`). */
export const embedInputSchema = z.union([z.string(), tokenIds, z.array(z.union([z.string(), tokenIds]))])
export type EmbedInput = z.infer<typeof embedInputSchema>

const embedOptionsSchema = z
  .object({
    instruction: z.string().optional(),
    dimensions: z.number().int().positive().optional(),
    normalize: z.boolean().optional(),
    signal: z.instanceof(AbortSignal).optional(),
  })
  .strict()

const rerankSchema = z
  .object({
    query: z.string().min(1),
    documents: z.array(z.string()).min(1),
    instruction: z.string().optional(),
    topN: z.number().int().positive().optional(),
    signal: z.instanceof(AbortSignal).optional(),
  })
  .strict()

/** One input or a list of inputs -> the list (a bare token-id array is one input). */
function asList(input: EmbedInput): (string | number[])[] {
  if (typeof input === 'string') return [input]
  if (input.length > 0 && input.every((x) => typeof x === 'number')) return [input as number[]]
  return input as (string | number[])[]
}

let nextId = 1_000_000_000

/** Runs one native pooling call, aborting it when `signal` fires. */
async function call<T>(engine: NativeEngine, signal: AbortSignal | undefined, start: (id: number, done: (e: { result?: T | null; error?: string | null }) => void) => void): Promise<T> {
  if (signal?.aborted) throw new AbortError()
  const id = nextId++
  const abort = () => engine.cancel(id)
  signal?.addEventListener('abort', abort, { once: true })
  try {
    return await new Promise<T>((resolve, reject) => {
      start(id, (e) => (e.result ? resolve(e.result) : reject(new Error(e.error ?? '[INTERNAL] no result'))))
    })
  } catch (e) {
    throw fromNative(e)
  } finally {
    signal?.removeEventListener('abort', abort)
  }
}

export async function embed(engine: NativeEngine, input: EmbedInput, options: EmbedOptions = {}): Promise<EmbedOutput> {
  parseOrThrow(embedInputSchema, input, 'input', 'INVALID_ARGUMENT')
  const { signal, ...opts } = parseOrThrow(embedOptionsSchema, options, 'embed options', 'INVALID_ARGUMENT')
  const inputs = asList(input)
  const r = await call<{ data: Float32Array; dims: number; count: number; promptTokens: number }>(engine, signal, (id, done) => {
    try {
      engine.embed(inputs, opts, id, done)
    } catch (e) {
      done({ error: e instanceof Error ? e.message : String(e) })
    }
  })
  // One buffer from the engine, one array per input (copies: each owns its memory).
  const embeddings = Array.from({ length: r.count }, (_, i) => r.data.slice(i * r.dims, (i + 1) * r.dims))
  return { embeddings, promptTokens: r.promptTokens }
}

export async function rerank(engine: NativeEngine, query: string, documents: string[], options: RerankOptions = {}): Promise<RerankOutput> {
  const o = parseOrThrow(rerankSchema, { query, documents, ...options }, 'rerank', 'INVALID_ARGUMENT')
  return call<RerankOutput>(engine, o.signal, (id, done) => {
    try {
      engine.rerank(o.query, o.documents, o.instruction, o.topN, id, done)
    } catch (e) {
      done({ error: e instanceof Error ? e.message : String(e) })
    }
  })
}
