/**
 * An OpenAI-compatible HTTP server on fastify: /v1/chat/completions, /v1/completions, /v1/models,
 * /tokenize, /detokenize, /health, /ready, /metrics. Every request joins the runner's continuous
 * batch; a client that disconnects cancels its request (its KV blocks are freed at the next step).
 */
import { createHash, timingSafeEqual } from 'node:crypto'
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import { z } from 'zod'
import { ModelRunner, type ModelRunnerOptions } from '../model-runner.js'
import { chatCompletions, type RequestContext, templateMessages } from './chat-completions.js'
import { completions } from './completions.js'
import { registerEmbeddings } from './embeddings.js'
import { registerRerank } from './rerank.js'
import { errorBody, HttpError, toHttpError } from './http-error.js'
import { Metrics } from './metrics.js'
import { chatRequestSchema, completionRequestSchema, parseBody } from './requests.js'

export interface ServerOptions extends Partial<ModelRunnerOptions> {
  /** A loaded runner to serve; otherwise one is loaded from `modelName` and the other runner options. */
  runner?: ModelRunner
  /** The model id clients send and /v1/models lists (default: modelName). */
  servedModelName?: string
  host?: string
  /** 0 picks a free port (see `server.port`). Default 8000. */
  port?: number
  /** Clients must send `Authorization: Bearer <apiKey>` to every route but /health, /ready and /metrics. */
  apiKey?: string
  /** Sequences that may wait for a place in the batch; beyond it requests get 429. Default 256. */
  maxQueue?: number
  /** Largest request body in bytes (413 above it). Default 4 MiB. */
  bodyLimit?: number
  /** Structured outputs (response_format json_schema, forced tool calls) generate only the object
   * keys a schema names unless it sets `additionalProperties` itself, so a constrained answer can
   * always close. false: JSON Schema's default (other keys allowed). Default true. */
  strictSchemas?: boolean
  /** fastify's request log (pino) to stdout. Default false. */
  logger?: boolean
}

export interface NanoQwenServer {
  readonly app: FastifyInstance
  readonly runner: ModelRunner
  readonly host: string
  readonly port: number
  /** e.g. http://127.0.0.1:8000/v1, for the openai client's baseURL. */
  readonly baseURL: string
  /** Stop accepting, let in-flight requests finish for `graceMs` (default 10 s), then cancel the
   * rest and close. The runner is disposed if the server loaded it. */
  close(opts?: { graceMs?: number }): Promise<void>
}

const serverOptionsSchema = z
  .object({
    host: z.string().min(1).optional(),
    port: z.number().int().min(0).max(65535).optional(),
    apiKey: z.string().min(1).optional(),
    maxQueue: z.number().int().min(0).optional(),
    bodyLimit: z.number().int().min(1024).optional(),
    servedModelName: z.string().min(1).optional(),
    strictSchemas: z.boolean().optional(),
  })
  .passthrough()

const digest = (s: string) => createHash('sha256').update(s).digest()

/** Same time whatever the key: both sides are hashed to equal lengths first. */
function keyMatches(header: string | undefined, key: Buffer): boolean {
  const m = /^Bearer (.+)$/.exec(header ?? '')
  return timingSafeEqual(digest(m?.[1] ?? ''), key) && m !== null
}

/** With an API key every route wants it (deny by default: a route added later is covered) but
 * these, which probes and scrapers call without one. */
const PUBLIC = new Set(['/health', '/ready', '/metrics'])

export async function createServer(options: ServerOptions): Promise<NanoQwenServer> {
  const o = serverOptionsSchema.safeParse(options)
  if (!o.success) {
    const i = o.error.issues[0]
    throw new Error(`invalid server option ${i.path.join('.')}: ${i.message}`)
  }
  const { runner: given, servedModelName, host = '127.0.0.1', port = 8000, apiKey, maxQueue = 256, bodyLimit = 4 << 20, logger = false, strictSchemas = true, ...load } = options
  const runner = given ?? (await ModelRunner.load(load as ModelRunnerOptions))
  const modelName = servedModelName ?? load.modelName ?? given?.getModelInfo().modelName ?? 'qwen3'
  const info = runner.getModelInfo() as ReturnType<ModelRunner['getModelInfo']> & { maxSeqLength: number }
  const capacity = info.serving.maxConcurrentSequences + maxQueue
  const metrics = new Metrics(modelName)
  const key = apiKey ? digest(apiKey) : undefined
  const inFlight = new Set<AbortController>()
  let sequences = 0
  let closing = false

  const app = Fastify({ logger, bodyLimit })
  app.addHook('onRequest', async (req) => {
    if (closing) throw new HttpError(503, 'the server is shutting down', 'server_error', null, 'shutting_down')
    if (key && !PUBLIC.has(req.url.split('?')[0]) && !keyMatches(req.headers.authorization, key)) {
      throw new HttpError(401, 'missing or wrong API key: send "Authorization: Bearer <key>"', 'invalid_request_error', null, 'invalid_api_key')
    }
  })
  app.addHook('onResponse', async (_req, reply) => metrics.httpResponse(reply.statusCode))
  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, _req, reply) => {
    // fastify's own (bad JSON, body too large, wrong content type) carry their status.
    const e =
      err instanceof HttpError || !err.statusCode || err.statusCode >= 500
        ? toHttpError(err)
        : new HttpError(err.statusCode, err.message, 'invalid_request_error', null, err.code?.toLowerCase() ?? null)
    if (e.status >= 500) app.log.error(err)
    reply.status(e.status).send(errorBody(e))
  })
  app.setNotFoundHandler((req, reply) => {
    reply.status(404).send(errorBody(new HttpError(404, `no route ${req.method} ${req.url.split('?')[0]}`, 'invalid_request_error', null, 'not_found')))
  })

  const checkModel = (model: string | undefined) => {
    if (model !== undefined && model !== modelName) {
      throw new HttpError(404, `the model ${JSON.stringify(model)} does not exist: this server serves ${JSON.stringify(modelName)}`, 'invalid_request_error', 'model', 'model_not_found')
    }
  }

  /** Admission: 429 past the queue; a disconnect aborts the request's generations. */
  async function withRequest(req: FastifyRequest, reply: FastifyReply, count: number, run: (ctx: RequestContext) => Promise<void>) {
    if (sequences + count > capacity) {
      throw new HttpError(429, `the server is at capacity (${capacity} sequences running or waiting): retry later`, 'server_error', null, 'queue_full')
    }
    const ac = new AbortController()
    const ctx: RequestContext = { runner, modelName, metrics, signal: ac.signal, started: performance.now(), failed: false, strictSchemas, abort: () => ((ctx.failed = true), ac.abort()) }
    const gone = () => {
      if (!reply.raw.writableFinished) ac.abort()
    }
    reply.raw.on('close', gone)
    sequences += count
    inFlight.add(ac)
    try {
      await run(ctx)
    } finally {
      sequences -= count
      inFlight.delete(ac)
    }
  }

  app.get('/health', async () => ({}))
  app.get('/ready', async () => ({ ready: true, model: modelName }))
  app.get('/metrics', async (_req, reply) => {
    reply.type('text/plain; version=0.0.4')
    return metrics.render(runner.getModelInfo().serving)
  })
  const model = () => ({ id: modelName, object: 'model', created: 0, owned_by: 'nano-qwen3-serving', max_model_len: info.maxSeqLength })
  app.get('/v1/models', async () => ({ object: 'list', data: [model()] }))
  app.get('/v1/models/:id', async (req) => {
    checkModel((req.params as { id: string }).id)
    return model()
  })

  app.post('/v1/chat/completions', async (req, reply) => {
    const r = parseBody(chatRequestSchema, req.body)
    checkModel(r.model)
    let body: unknown
    await withRequest(req, reply, r.n ?? 1, (ctx) => chatCompletions(r, ctx, reply, (b) => (body = b)))
    return reply.sent ? reply : body
  })
  app.post('/v1/completions', async (req, reply) => {
    const r = parseBody(completionRequestSchema, req.body)
    checkModel(r.model)
    const prompts = typeof r.prompt === 'string' || r.prompt.every((x) => typeof x === 'number') ? 1 : r.prompt.length
    let body: unknown
    await withRequest(req, reply, prompts * (r.n ?? 1), (ctx) => completions(r, ctx, reply, (b) => (body = b)))
    return reply.sent ? reply : body
  })

  const pooling = { runner, modelName, checkModel, withRequest, maxSequences: info.serving.maxConcurrentSequences }
  registerEmbeddings(app, pooling)
  registerRerank(app, pooling)

  const tokenizeSchema = z.union([
    z.object({ model: z.string().optional(), prompt: z.string(), add_special_tokens: z.boolean().optional() }).strict(),
    z.object({ model: z.string().optional(), messages: chatRequestSchema.shape.messages, add_generation_prompt: z.boolean().optional(), add_special_tokens: z.boolean().optional() }).strict(),
  ])
  app.post('/tokenize', async (req) => {
    const r = parseBody(tokenizeSchema, req.body)
    checkModel(r.model)
    const text = 'prompt' in r ? r.prompt : runner.applyChatTemplate(templateMessages(r.messages), { addGenerationPrompt: r.add_generation_prompt ?? true })
    const tokens = runner.tokenize(text, { addSpecialTokens: r.add_special_tokens ?? false })
    return { tokens, count: tokens.length, max_model_len: info.maxSeqLength }
  })
  app.post('/detokenize', async (req) => {
    const r = parseBody(z.object({ model: z.string().optional(), tokens: z.array(z.number().int().min(0)) }).strict(), req.body)
    checkModel(r.model)
    return { prompt: runner.detokenize(r.tokens) }
  })

  await app.listen({ host, port })
  const address = app.server.address()
  const boundPort = typeof address === 'object' && address ? address.port : port
  const shownHost = host.includes(':') ? `[${host}]` : host
  return {
    app,
    runner,
    host,
    port: boundPort,
    baseURL: `http://${shownHost}:${boundPort}/v1`,
    async close({ graceMs = 10_000 } = {}) {
      closing = true
      const timer = setTimeout(() => inFlight.forEach((ac) => ac.abort()), graceMs)
      // Keep-alive connections become idle as their last response ends: close them then, not
      // after the keep-alive timeout.
      const idle = setInterval(() => app.server.closeIdleConnections(), 50)
      try {
        await app.close()
      } finally {
        clearTimeout(timer)
        clearInterval(idle)
      }
      if (!given) await runner.dispose()
    },
  }
}
