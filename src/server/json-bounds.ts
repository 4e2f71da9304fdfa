/**
 * Request bodies cross into the engine as JSON values, which the binding refuses past 128 levels
 * of nesting (and llguidance's JSON reader past 128 too). A body nested that deep is the client's
 * mistake: it is refused here, as a 400 naming the field, at a documented bound.
 */
import { badRequest } from './http-error.js'

/** Deepest nesting of objects and arrays a request body may have (the body itself is level 1). */
export const MAX_JSON_DEPTH = 64

/** The path (keys and indices) to the first value nested deeper than `limit`, or null. */
export function tooDeepAt(value: unknown, limit: number): (string | number)[] | null {
  // Iterative: a recursive walk would itself overflow on the bodies it is meant to refuse.
  const stack: { v: unknown; path: (string | number)[] }[] = [{ v: value, path: [] }]
  while (stack.length) {
    const { v, path } = stack.pop()!
    if (v === null || typeof v !== 'object') continue
    if (path.length >= limit) return path
    const entries: [string | number, unknown][] = Array.isArray(v) ? v.map((x, i) => [i, x]) : Object.entries(v)
    for (const [k, x] of entries) if (x !== null && typeof x === 'object') stack.push({ v: x, path: [...path, k] })
  }
  return null
}

/** 400 when `body` nests deeper than MAX_JSON_DEPTH; `param` is the top-level field holding it. */
export function checkJsonDepth(body: unknown): void {
  const at = tooDeepAt(body, MAX_JSON_DEPTH)
  if (!at) return
  const shown = at.slice(0, 6).map((k) => (typeof k === 'number' ? `[${k}]` : `.${k}`)).join('').replace(/^\./, '')
  throw badRequest(`invalid ${at[0]}: nested more than ${MAX_JSON_DEPTH} levels deep (at ${shown}...); at most ${MAX_JSON_DEPTH} levels are accepted`, String(at[0]))
}
