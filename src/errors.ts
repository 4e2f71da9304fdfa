/** Every error this package throws: `code` is stable, `message` names the bad value and what is allowed. */
export class NanoQwenError extends Error {
  readonly code: string
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'NanoQwenError'
    this.code = code
  }
}

/** Thrown when an AbortSignal stops a generation. `name` is 'AbortError', as with fetch. */
export class AbortError extends NanoQwenError {
  constructor(message = 'generation aborted') {
    super('ABORTED', message)
    this.name = 'AbortError'
  }
}

/** Native errors arrive as "[CODE] message"; give them their code back. */
export function fromNative(e: unknown): Error {
  const message = e instanceof Error ? e.message : String(e)
  const m = /^\[([A-Z_]+)\] ([\s\S]*)$/.exec(message)
  if (!m) return e instanceof Error ? e : new Error(message)
  if (m[1] === 'ABORTED') return new AbortError(m[2])
  return new NanoQwenError(m[1], m[2], { cause: e })
}

/** Run a native call, converting its error. */
export function native<T>(f: () => T): T {
  try {
    return f()
  } catch (e) {
    throw fromNative(e)
  }
}
