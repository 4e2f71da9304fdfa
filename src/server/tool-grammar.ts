/**
 * `tool_choice: "required"` or a named function: a Lark grammar that admits exactly one Qwen3
 * (Hermes-style) tool call, `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, whose
 * arguments follow the function's JSON schema. llguidance enforces it token by token.
 */
import { closeObjects } from './strict-schema.js'

export interface FunctionTool {
  type: 'function'
  function: { name: string; parameters?: Record<string, unknown> }
}

/** OpenAI: a function without `parameters` takes none. */
const NO_PARAMETERS = { type: 'object', properties: {}, additionalProperties: false }

/** `strict`: objects generate only the keys their schema names (see strict-schema.ts). */
export function toolCallGrammar(tools: FunctionTool[], strict = true): string {
  const calls = tools.map((t) => {
    const params = t.function.parameters ?? NO_PARAMETERS
    return {
      type: 'object',
      properties: { name: { const: t.function.name }, arguments: strict ? closeObjects(params) : params },
      required: ['name', 'arguments'],
      additionalProperties: false,
    }
  })
  const schema = {
    ...(calls.length === 1 ? calls[0] : { anyOf: calls }),
    // The layout Qwen3's chat template writes tool calls in (json.dumps).
    'x-guidance': { whitespace_flexible: false, item_separator: ', ', key_separator: ': ' },
  }
  return `start: "<tool_call>\\n" call "\\n</tool_call>"\ncall: %json ${JSON.stringify(schema)}\n`
}
