/** What the embedding and rerank routes need of the server (passed from createServer). */
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { ModelRunner } from '../model-runner.js'
import type { RequestContext } from './chat-completions.js'

export interface PoolingDeps {
  runner: ModelRunner
  modelName: string
  /** 404 unless `model` is absent or the served name. */
  checkModel: (model: string | undefined) => void
  /** Admission (429 past the queue) and cancellation when the client goes away. */
  withRequest: (req: FastifyRequest, reply: FastifyReply, count: number, run: (ctx: RequestContext) => Promise<void>) => Promise<void>
  /** Sequences running at once: a request of many inputs is admitted as at most this many. */
  maxSequences: number
}

/** Inputs one request may hold (OpenAI's limit; the engine enforces the same). */
export const MAX_INPUTS = 2048
