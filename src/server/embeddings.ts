/** POST /v1/embeddings, as OpenAI serves it: `input` a string, strings, token ids or arrays of
 * them; `dimensions` (Matryoshka); `encoding_format` float or base64 (little-endian float32, as
 * the openai client decodes it); usage. Extensions: `instruction` (Qwen3-Embedding's query
 * task), `normalize`. */
import type { FastifyInstance } from 'fastify'
import { z } from 'zod'
import { badRequest } from './http-error.js'
import { MAX_INPUTS, type PoolingDeps } from './pooling-routes.js'
import { parseBody } from './requests.js'

const tokenIds = z.array(z.number().int().min(0).max(2 ** 32 - 1))

const embeddingsSchema = z
  .object({
    model: z.string().optional(),
    input: z.union([z.string(), tokenIds, z.array(z.union([z.string(), tokenIds]))]),
    dimensions: z.number().int().positive().nullish(),
    encoding_format: z.enum(['float', 'base64']).nullish(),
    user: z.string().nullish(),
    instruction: z.string().nullish(),
    normalize: z.boolean().nullish(),
  })
  .strict()

/** float32 values as OpenAI's base64 encoding: their little-endian bytes. */
export function toBase64(v: Float32Array): string {
  const le = new Float32Array(v) // a copy with its own buffer (a view may start mid-buffer)
  const bytes = Buffer.from(le.buffer, le.byteOffset, le.byteLength)
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) bytes.swap32() // big-endian host
  return bytes.toString('base64')
}

export function registerEmbeddings(app: FastifyInstance, d: PoolingDeps): void {
  app.post('/v1/embeddings', async (req, reply) => {
    const r = parseBody(embeddingsSchema, req.body)
    d.checkModel(r.model)
    const single = typeof r.input === 'string' || (r.input.length > 0 && r.input.every((x) => typeof x === 'number'))
    const count = single ? 1 : r.input.length
    if (count === 0) throw badRequest('invalid input = []: at least one text or token-id array', 'input')
    if (count > MAX_INPUTS) throw badRequest(`invalid input = ${count} inputs: at most ${MAX_INPUTS} inputs per request`, 'input')
    let body: unknown
    await d.withRequest(req, reply, Math.min(count, d.maxSequences), async (ctx) => {
      const out = await d.runner.embedWithUsage(r.input, {
        dimensions: r.dimensions ?? undefined,
        instruction: r.instruction ?? undefined,
        normalize: r.normalize ?? undefined,
        signal: ctx.signal,
      })
      const base64 = r.encoding_format === 'base64'
      body = {
        object: 'list',
        data: out.embeddings.map((v, index) => ({ object: 'embedding', index, embedding: base64 ? toBase64(v) : Array.from(v) })),
        model: d.modelName,
        usage: { prompt_tokens: out.promptTokens, total_tokens: out.promptTokens },
      }
    })
    return body
  })
}
