/**
 * Closed objects for structured outputs: every object schema that names its `properties` (or
 * `patternProperties`) and says nothing of `additionalProperties` gets `additionalProperties:
 * false`, so constrained decoding generates only the keys the schema names. JSON Schema's default
 * (any other key allowed) lets a sampled model add keys until `max_tokens`, and a forced tool call
 * then never closes. vLLM's default backend (xgrammar) and its `disable_additional_properties`
 * option for llguidance do the same. The walk knows where subschemas sit, so a property that
 * happens to be called "properties" is not mistaken for a keyword.
 */
type Json = unknown
type Schema = Record<string, Json>

const SCHEMA_MAPS = ['properties', 'patternProperties', '$defs', 'definitions', 'dependentSchemas'] as const
const SCHEMA_ONE = ['items', 'additionalItems', 'contains', 'not', 'if', 'then', 'else', 'additionalProperties', 'propertyNames', 'unevaluatedItems', 'unevaluatedProperties'] as const
const SCHEMA_LISTS = ['prefixItems', 'anyOf', 'oneOf', 'items'] as const

const isObject = (v: Json): v is Schema => v !== null && typeof v === 'object' && !Array.isArray(v)

/** A copy of `schema` with its objects closed (the input is left as it was). */
export function closeObjects(schema: Json): Json {
  return close(schema, true)
}

/** `closable`: false for the members of an `allOf`, whose properties only together say what is allowed. */
function close(schema: Json, closable: boolean): Json {
  if (!isObject(schema)) return schema
  const out: Schema = { ...schema }
  for (const k of SCHEMA_MAPS) {
    if (isObject(out[k])) out[k] = Object.fromEntries(Object.entries(out[k] as Schema).map(([name, s]) => [name, close(s, true)]))
  }
  for (const k of SCHEMA_ONE) if (isObject(out[k])) out[k] = close(out[k], true)
  for (const k of SCHEMA_LISTS) if (Array.isArray(out[k])) out[k] = (out[k] as Json[]).map((s) => close(s, true))
  if (Array.isArray(out.allOf)) out.allOf = (out.allOf as Json[]).map((s) => close(s, false))
  const names = isObject(out.properties) || isObject(out.patternProperties)
  // Keys that bring properties from elsewhere: closing this level alone would refuse theirs.
  const composed = ['allOf', 'anyOf', 'oneOf', '$ref', 'if', 'dependentSchemas'].some((k) => k in out)
  if (closable && names && !composed && !('additionalProperties' in out) && !('unevaluatedProperties' in out)) out.additionalProperties = false
  return out
}
