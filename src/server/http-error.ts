/** OpenAI's error body, and which status each failure gets: a client's mistake is never a 500. */
import { NanoQwenError } from '../errors.js'

export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message)
  }
}

export const badRequest = (message: string, param: string | null = null) => new HttpError(400, message, 'invalid_request_error', param, 'invalid_value')

export function errorBody(e: HttpError) {
  return { error: { message: e.message, type: e.type, param: e.param, code: e.code } }
}

/** Engine errors a request can cause map to 400; the rest stay server errors. */
const CLIENT_CODES: Record<string, string> = {
  INVALID_ARGUMENT: 'invalid_value',
  CONTEXT_OVERFLOW: 'context_length_exceeded',
  TEMPLATE_ERROR: 'invalid_value',
  TOKENIZER_ERROR: 'invalid_value',
}

export function toHttpError(e: unknown): HttpError {
  if (e instanceof HttpError) return e
  // The client went away and its request was cancelled: nginx's 499, never sent to anyone, but
  // counted apart from server errors in /metrics.
  if (e instanceof NanoQwenError && e.code === 'ABORTED') return new HttpError(499, 'client closed the request', 'invalid_request_error', null, 'client_closed_request')
  if (e instanceof NanoQwenError && e.code in CLIENT_CODES) {
    const param = /^invalid ([A-Za-z_.\[\]0-9 ]+?) =/.exec(e.message)?.[1] ?? null
    return new HttpError(400, e.message, 'invalid_request_error', param, CLIENT_CODES[e.code])
  }
  const message = e instanceof Error ? e.message : String(e)
  return new HttpError(500, message, 'server_error', null, e instanceof NanoQwenError ? e.code.toLowerCase() : null)
}
