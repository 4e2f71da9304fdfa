import type { z } from 'zod'
import { NanoQwenError } from './errors.js'

/** A value as the user wrote it: JSON, except numbers JSON cannot hold (Infinity, NaN) and undefined. */
function show(value: unknown): string {
  if (typeof value === 'number' && !Number.isFinite(value)) return String(value)
  return JSON.stringify(value) ?? String(value)
}

/** Turn a zod failure into one readable message: where, the bad value, what is allowed. */
export function formatIssues(what: string, error: z.ZodError, input: unknown): string {
  return error.issues
    .map((issue) => {
      const path = [what, ...issue.path].join('.')
      const value = issue.path.reduce<any>((v, k) => (v == null ? v : v[k]), input)
      switch (issue.code) {
        case 'invalid_enum_value':
          return `${path} = ${JSON.stringify(issue.received)}: allowed ${issue.options.map((o) => JSON.stringify(o)).join(', ')}`
        case 'unrecognized_keys':
          return `${what} has unknown option(s) ${issue.keys.map((k) => JSON.stringify(k)).join(', ')}`
        default:
          return `${path} = ${show(value)}: ${issue.message}`
      }
    })
    .join('; ')
}

export function parseOrThrow<S extends z.ZodTypeAny>(schema: S, input: unknown, what: string, code: string): z.output<S> {
  const r = schema.safeParse(input)
  if (!r.success) throw new NanoQwenError(code, `invalid ${formatIssues(what, r.error, input)}`)
  return r.data
}
