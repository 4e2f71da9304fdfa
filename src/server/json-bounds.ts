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
  // Iterative: a recursive walk would itself overflow on the bodies it is meant to refuse. Each
  // entry links to its parent, so the path is built only for the one that fails.
  type Entry = { v: unknown; depth: number; key: string | number; up: Entry | null }
  const stack: Entry[] = [{ v: value, depth: 0, key: '', up: null }]
  while (stack.length) {
    const e = stack.pop()!
    if (e.depth >= limit) {
      const path: (string | number)[] = []
      for (let at: Entry | null = e; at?.up; at = at.up) path.unshift(at.key)
      return path
    }
    const entries: [string | number, unknown][] = Array.isArray(e.v) ? e.v.map((x, i) => [i, x]) : Object.entries(e.v as object)
    for (const [k, x] of entries) if (x !== null && typeof x === 'object') stack.push({ v: x, depth: e.depth + 1, key: k, up: e })
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
