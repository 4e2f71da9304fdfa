/**
 * Server-sent events as OpenAI streams them: `data: <json>\n\n` per chunk, then `data: [DONE]`.
 * Nothing is written (and fastify keeps the reply) until the first event: a request the engine
 * refuses still gets its 400 as a plain JSON error.
 */
import type { FastifyReply } from 'fastify'

export class SseWriter {
  private started = false

  constructor(private reply: FastifyReply) {}

  get open(): boolean {
    const res = this.reply.raw
    return !res.destroyed && !res.writableEnded
  }

  send(data: unknown) {
    if (!this.started) {
      this.started = true
      this.reply.hijack()
      this.reply.raw.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive' })
    }
    if (this.open) this.reply.raw.write(`data: ${JSON.stringify(data)}\n\n`)
  }

  /** Ends the stream; `error` (OpenAI's error body) goes out as a last event if it had begun. Returns
   * false when nothing was sent yet: the caller then answers with a plain error. */
  end(error?: unknown): boolean {
    if (!this.started) return false
    if (this.open) {
      if (error) this.reply.raw.write(`data: ${JSON.stringify(error)}\n\n`)
      this.reply.raw.end('data: [DONE]\n\n')
    }
    return true
  }
}
