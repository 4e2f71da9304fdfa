/**
 * Structured outputs on the HTTP API: what a request constrains its output to (OpenAI's
 * `response_format` and forced `tool_choice`, vLLM's `structured_outputs`), as one grammar for the
 * engine, and the request field it came from, so a grammar the engine refuses is a 400 naming it.
 */
import type { GenerationParams } from '../params.js'
import { badRequest, HttpError, toHttpError } from './http-error.js'
import { MAX_JSON_DEPTH, tooDeepAt } from './json-bounds.js'
import type { ChatRequest, CompletionRequest } from './requests.js'
import { closeObjects } from './strict-schema.js'
import { type FunctionTool, toolCallGrammar } from './tool-grammar.js'

export interface Constraint {
  grammar: NonNullable<GenerationParams['grammar']>
  /** The request field the grammar came from. */
  param: string
  /** A forced tool call: the functions it may call. */
  forcedNames?: string[]
}

const escapeRegex = (s: string) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')

/** vLLM's `structured_outputs` (exactly one of json, regex, choice, grammar). */
function structuredOutputs(r: ChatRequest | CompletionRequest, strict: boolean): Constraint | undefined {
  const s = r.structured_outputs
  if (!s) return undefined
  const given = (['json', 'regex', 'choice', 'grammar'] as const).filter((k) => s[k] != null)
  if (given.length !== 1) throw badRequest(`invalid structured_outputs: exactly one of json, regex, choice, grammar (got ${given.join(', ') || 'none'})`, 'structured_outputs')
  const param = `structured_outputs.${given[0]}`
  if (s.json != null) {
    let schema: unknown = s.json
    if (typeof schema === 'string') {
      try {
        schema = JSON.parse(schema)
      } catch {
        throw badRequest(`invalid ${param}: not JSON`, param)
      }
    }
    if (schema === null || typeof schema !== 'object' || Array.isArray(schema)) throw badRequest(`invalid ${param}: a JSON schema object`, param)
    // A schema sent as a string escaped the body's depth check.
    if (tooDeepAt(schema, MAX_JSON_DEPTH)) throw badRequest(`invalid ${param}: nested more than ${MAX_JSON_DEPTH} levels deep`, param)
    return { grammar: { type: 'json_schema', schema: (strict ? closeObjects(schema) : schema) as Record<string, unknown> }, param }
  }
  if (s.regex != null) return { grammar: { type: 'regex', pattern: s.regex }, param }
  if (s.choice != null) return { grammar: { type: 'regex', pattern: s.choice.map(escapeRegex).join('|') }, param }
  return { grammar: { type: 'lark', grammar: s.grammar! }, param }
}

/** The grammar a chat request's tool_choice, response_format or structured_outputs asks for. */
export function chatConstraint(r: ChatRequest, strict: boolean): Constraint | undefined {
  const tools = (r.tools ?? []) as FunctionTool[]
  const choice = r.tool_choice
  const forced = (ts: FunctionTool[]): Constraint => ({
    grammar: { type: 'lark', grammar: toolCallGrammar(ts, strict) },
    param: 'tools',
    forcedNames: ts.map((t) => t.function.name),
  })
  const f = r.response_format?.type === 'text' ? undefined : r.response_format
  const asked = [choice === 'required' || typeof choice === 'object' ? 'tool_choice' : '', f ? 'response_format' : '', r.structured_outputs ? 'structured_outputs' : ''].filter(Boolean)
  if (asked.length > 1) throw badRequest(`invalid ${asked[1]}: one output constraint per request (also given: ${asked[0]})`, asked[1])
  if (choice === 'required') {
    if (!tools.length) throw badRequest('invalid tool_choice = "required": needs at least one entry in tools', 'tool_choice')
    return forced(tools)
  }
  if (choice && typeof choice === 'object') {
    const t = tools.find((x) => x.function.name === choice.function.name)
    if (!t) throw badRequest(`invalid tool_choice.function.name = ${JSON.stringify(choice.function.name)}: one of the tools' names (${tools.map((x) => x.function.name).join(', ') || 'none given'})`, 'tool_choice')
    return forced([t])
  }
  if (f?.type === 'json_schema' && f.json_schema.schema) {
    const schema = (strict ? closeObjects(f.json_schema.schema) : f.json_schema.schema) as Record<string, unknown>
    return { grammar: { type: 'json_schema', schema }, param: 'response_format.json_schema.schema' }
  }
  if (f) return { grammar: { type: 'json_object' }, param: 'response_format' }
  return structuredOutputs(r, strict)
}

export const completionConstraint = structuredOutputs

/** The engine refuses a grammar as `invalid grammar = ...`: name the request field it came from. */
export function fromField(e: unknown, c: Constraint | undefined): unknown {
  const h = toHttpError(e)
  if (!c || h.status !== 400 || h.param !== 'grammar') return e
  return new HttpError(400, h.message.replace(/^invalid grammar = /, `invalid ${c.param}: `), h.type, c.param, h.code)
}
