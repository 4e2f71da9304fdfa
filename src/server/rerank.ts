/** Reranking as vLLM serves it: POST /v1/rerank (also /rerank, /v2/rerank; Jina / Cohere shape:
 * `query`, `documents`, `top_n` -> `results` of `index`, `document`, `relevance_score`, best
 * first) and POST /v1/score (also /score: `text_1` against `text_2`, one-to-many or pairwise ->
 * `data` of `index`, `score` in input order). Scores: Qwen3-Reranker's template, P(yes) in [0, 1].
 * Extension: `instruction` (the reranker's task). */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { randomUUID } from 'node:crypto'
import { z } from 'zod'
import { badRequest } from './http-error.js'
import { MAX_INPUTS, type PoolingDeps } from './pooling-routes.js'
import { parseBody } from './requests.js'

/** A document: its text, or Jina / Cohere's `{ text }`. */
const documentSchema = z.union([z.string(), z.object({ text: z.string() }).strict()])

const rerankSchema = z
  .object({
    model: z.string().optional(),
    query: z.string().min(1),
    documents: z.array(documentSchema).min(1).max(MAX_INPUTS),
    top_n: z.number().int().min(0).nullish(),
    return_documents: z.boolean().nullish(),
    instruction: z.string().nullish(),
  })
  .strict()

const textOrTexts = z.union([z.string(), z.array(z.string()).min(1).max(MAX_INPUTS)])
const scoreSchema = z
  .object({
    model: z.string().optional(),
    text_1: textOrTexts,
    text_2: textOrTexts,
    instruction: z.string().nullish(),
  })
  .strict()

export function registerRerank(app: FastifyInstance, d: PoolingDeps): void {
  const rerank = async (req: FastifyRequest, reply: FastifyReply) => {
    const r = parseBody(rerankSchema, req.body)
    d.checkModel(r.model)
    const texts = r.documents.map((doc) => (typeof doc === 'string' ? doc : doc.text))
    let body: unknown
    await d.withRequest(req, reply, Math.min(texts.length, d.maxSequences), async (ctx) => {
      // top_n 0 or absent: every document (vLLM's default).
      const out = await d.runner.rerankWithUsage(r.query, texts, { topN: r.top_n || undefined, instruction: r.instruction ?? undefined, signal: ctx.signal })
      body = {
        id: `rerank-${randomUUID()}`,
        model: d.modelName,
        usage: { prompt_tokens: out.promptTokens, total_tokens: out.promptTokens },
        results: out.results.map(({ index, score }) => ({
          index,
          ...(r.return_documents === false ? {} : { document: { text: texts[index] } }),
          relevance_score: score,
        })),
      }
    })
    return body
  }
  for (const path of ['/v1/rerank', '/rerank', '/v2/rerank']) app.post(path, rerank)

  const score = async (req: FastifyRequest, reply: FastifyReply) => {
    const r = parseBody(scoreSchema, req.body)
    d.checkModel(r.model)
    const queries = typeof r.text_1 === 'string' ? [r.text_1] : r.text_1
    const docs = typeof r.text_2 === 'string' ? [r.text_2] : r.text_2
    // One query against many documents, or pairwise when both are lists of one length.
    if (queries.length > 1 && queries.length !== docs.length) {
      throw badRequest(`invalid text_1 = ${queries.length} texts: one text, or as many as text_2 (${docs.length})`, 'text_1')
    }
    if (queries.some((q) => q.length === 0)) throw badRequest('invalid text_1 = "": non-empty texts', 'text_1')
    let body: unknown
    await d.withRequest(req, reply, Math.min(docs.length, d.maxSequences), async (ctx) => {
      const opts = { instruction: r.instruction ?? undefined, signal: ctx.signal }
      const calls =
        queries.length === 1
          ? [d.runner.rerankWithUsage(queries[0], docs, opts)]
          : queries.map((q, i) => d.runner.rerankWithUsage(q, [docs[i]], opts))
      const outs = await Promise.all(calls)
      const scores = new Array<number>(docs.length)
      outs.forEach((o, k) => o.results.forEach(({ index, score }) => (scores[queries.length === 1 ? index : k] = score)))
      const tokens = outs.reduce((n, o) => n + o.promptTokens, 0)
      body = {
        id: `score-${randomUUID()}`,
        object: 'list',
        created: Math.floor(Date.now() / 1000),
        model: d.modelName,
        data: scores.map((score, index) => ({ index, object: 'score', score })),
        usage: { prompt_tokens: tokens, total_tokens: tokens },
      }
    })
    return body
  }
  for (const path of ['/v1/score', '/score']) app.post(path, score)
}
