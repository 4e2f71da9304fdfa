/** Splitting Qwen3 output into reasoning (<think>), content and tool calls, whole or streamed. */
import { z } from 'zod'

export const CHAT_ROLES = ['system', 'user', 'assistant', 'tool'] as const

export interface ChatMessage {
  role: (typeof CHAT_ROLES)[number]
  content: string
  reasoning_content?: string
  tool_calls?: ToolCall[]
  [key: string]: unknown
}

/** What the chat template is given: known roles, text content, tool calls and tools as objects. */
export const chatInputSchema = z.object({
  messages: z
    .array(
      z
        .object({
          role: z.enum(CHAT_ROLES),
          content: z.string(),
          reasoning_content: z.string().optional(),
          tool_calls: z
            .array(z.object({ function: z.object({ name: z.string(), arguments: z.record(z.unknown()) }).passthrough() }).passthrough())
            .optional(),
        })
        .passthrough(),
    )
    .min(1, 'at least one message'),
  tools: z.array(z.record(z.unknown())).optional(),
})

export interface ToolCall {
  type: 'function'
  function: { name: string; arguments: Record<string, unknown> }
}

export interface ParsedAssistantOutput {
  content: string
  reasoningContent: string
  toolCalls: ToolCall[]
}

const THINK_OPEN = '<think>'
const THINK_CLOSE = '</think>'
const TOOL_RE = /<tool_call>\s*([\s\S]*?)\s*<\/tool_call>/g

function parseToolCall(body: string): ToolCall | undefined {
  try {
    const v = JSON.parse(body)
    if (v && typeof v.name === 'string') {
      const args = typeof v.arguments === 'string' ? JSON.parse(v.arguments) : (v.arguments ?? {})
      return { type: 'function', function: { name: v.name, arguments: args } }
    }
  } catch {
    // Not valid JSON: left in the content, where the caller can see it.
  }
  return undefined
}

/** Split a finished assistant message; with `toolCalls: false` (no tools offered) tool-call markup stays content. */
export function parseAssistantOutput(text: string, opts: { toolCalls?: boolean } = {}): ParsedAssistantOutput {
  let reasoningContent = ''
  let content = text
  const close = text.indexOf(THINK_CLOSE)
  if (close >= 0) {
    const before = text.slice(0, close)
    const open = before.indexOf(THINK_OPEN)
    reasoningContent = (open >= 0 ? before.slice(open + THINK_OPEN.length) : before).replace(/^\n+|\n+$/g, '')
    content = text.slice(close + THINK_CLOSE.length).replace(/^\n+/, '')
  } else if (text.trimStart().startsWith(THINK_OPEN)) {
    // Cut off while still thinking.
    reasoningContent = text.trimStart().slice(THINK_OPEN.length).replace(/^\n+/, '')
    content = ''
  }
  const toolCalls: ToolCall[] = []
  if (opts.toolCalls === false) return { content, reasoningContent, toolCalls }
  content = content.replace(TOOL_RE, (whole, body: string) => {
    const call = parseToolCall(body)
    if (!call) return whole
    toolCalls.push(call)
    return ''
  })
  return { content: toolCalls.length ? content.trim() : content, reasoningContent, toolCalls }
}

export interface ChatDelta {
  content: string
  reasoningContent: string
  toolCalls: ToolCall[]
  /** With `toolArguments: 'incremental'`: tool calls as they are written. A call's first part has
   * its `name` (and `arguments: ''`); the next ones carry the following text of its arguments JSON. */
  toolCallParts?: ToolCallPart[]
}

export interface ToolCallPart {
  /** Which call of the message (0, 1, ...). */
  index: number
  name?: string
  arguments: string
}

/** The start of a Hermes-style call, up to where its arguments begin. */
const CALL_HEAD = /^\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*(?=\S)/

/** True if `text` ends with a proper prefix of `tag` (so more text may complete the tag). */
function partialTagAt(text: string, tag: string): number {
  for (let k = Math.min(tag.length - 1, text.length); k > 0; k--) {
    if (text.endsWith(tag.slice(0, k))) return text.length - k
  }
  return -1
}

/**
 * A forced tool call cut off by `max_tokens` (`text`: what follows `<tool_call>`): the function it
 * names (complete, or the first of `names` its beginning can still become) and its arguments as far
 * as they got, without the call's closing brace and tag when those were reached.
 */
export function cutToolCall(text: string, names: string[]): { name: string; arguments: string } {
  const head = CALL_HEAD.exec(text)
  if (!head) {
    const partial = /"name"\s*:\s*"((?:[^"\\]|\\.)*)$/.exec(text)?.[1] ?? ''
    return { name: names.find((n) => n.startsWith(partial)) ?? names[0] ?? '', arguments: '' }
  }
  let name: string
  try {
    name = JSON.parse(head[1])
  } catch {
    name = names[0] ?? ''
  }
  let args = text.slice(head[0].length)
  const tag = partialTagAt(args, '\n</tool_call>')
  if (tag >= 0) args = args.slice(0, tag)
  args = args.replace(/\n<\/tool_call>[\s\S]*$/, '')
  const parses = (s: string) => {
    try {
      JSON.parse(s)
      return true
    } catch {
      return false
    }
  }
  if (!parses(args) && /\}\s*$/.test(args) && parses(args.replace(/\}\s*$/, ''))) args = args.replace(/\}\s*$/, '')
  return { name, arguments: args }
}

/** Incremental version of parseAssistantOutput: feed text deltas, get content/reasoning deltas. */
export class ChatStreamSplitter {
  private buffer = ''
  private mode: 'start' | 'reasoning' | 'content' | 'tool' = 'start'
  /** Nothing of the reasoning released yet: its leading newlines are still to be stripped. */
  private reasoningStart = true

  /** Incremental tool calls: the calls begun, and how much of the current one was released. */
  private callsBegun = 0
  private argsSent = -1

  /** `toolCalls: false` (no tools offered): tool-call markup stays content. `toolArguments:
   * 'incremental'`: tool calls come as `toolCallParts` while they are written (the OpenAI stream).
   * `forcedNames`: the output is a forced tool call of one of these functions (tool_choice), so a
   * call cut off before its name was complete still comes out as a call. */
  constructor(private opts: { toolCalls?: boolean; toolArguments?: 'whole' | 'incremental'; forcedNames?: string[] } = {}) {}

  /** Incremental mode, inside a <tool_call> block: release the call's name, then its arguments
   * up to what may still be the object's closing brace (or the start of the closing tag). */
  private streamCall(body: string, ended: boolean, out: ChatDelta): void {
    const parts = (out.toolCallParts ??= [])
    if (this.argsSent < 0) {
      const head = CALL_HEAD.exec(body)
      if (!head) return
      let name: string
      try {
        name = JSON.parse(head[1])
      } catch {
        return
      }
      parts.push({ index: this.callsBegun++, name, arguments: '' })
      this.argsSent = head[0].length
    }
    let cut = body.length
    if (!ended) {
      const tag = partialTagAt(body, '</tool_call>')
      if (tag >= 0) cut = tag
    }
    cut -= (ended ? /\s*\}?\s*$/ : /\}?\s*$/).exec(body.slice(0, cut))![0].length
    if (cut > this.argsSent) {
      parts.push({ index: this.callsBegun - 1, arguments: body.slice(this.argsSent, cut) })
      this.argsSent = cut
    }
  }

  push(text: string): ChatDelta {
    this.buffer += text
    const out: ChatDelta = { content: '', reasoningContent: '', toolCalls: [] }
    for (;;) {
      if (this.mode === 'start') {
        const trimmed = this.buffer.trimStart()
        if (trimmed.startsWith(THINK_OPEN)) {
          this.buffer = trimmed.slice(THINK_OPEN.length).replace(/^\n+/, '')
          this.mode = 'reasoning'
        } else if (THINK_OPEN.startsWith(trimmed)) {
          return out // might still become <think>
        } else {
          this.mode = 'content'
        }
      } else if (this.mode === 'reasoning') {
        if (this.reasoningStart) {
          this.buffer = this.buffer.replace(/^\n+/, '')
          if (!this.buffer) return out
          this.reasoningStart = false
        }
        const close = this.buffer.indexOf(THINK_CLOSE)
        if (close >= 0) {
          out.reasoningContent += this.buffer.slice(0, close).replace(/\n+$/, '')
          this.buffer = this.buffer.slice(close + THINK_CLOSE.length).replace(/^\n+/, '')
          this.mode = 'content'
          continue
        }
        // Hold back trailing newlines (stripped before </think>) and a partial closing tag.
        const hold = partialTagAt(this.buffer, THINK_CLOSE)
        let cut = hold >= 0 ? hold : this.buffer.length
        while (cut > 0 && this.buffer[cut - 1] === '\n') cut--
        out.reasoningContent += this.buffer.slice(0, cut)
        this.buffer = this.buffer.slice(cut)
        return out
      } else if (this.mode === 'content') {
        if (this.opts.toolCalls === false) {
          out.content += this.buffer
          this.buffer = ''
          return out
        }
        const open = this.buffer.indexOf('<tool_call>')
        if (open >= 0) {
          out.content += this.buffer.slice(0, open)
          this.buffer = this.buffer.slice(open)
          this.mode = 'tool'
          continue
        }
        const hold = partialTagAt(this.buffer, '<tool_call>')
        const cut = hold >= 0 ? hold : this.buffer.length
        out.content += this.buffer.slice(0, cut)
        this.buffer = this.buffer.slice(cut)
        return out
      } else {
        const end = this.buffer.indexOf('</tool_call>')
        const incremental = this.opts.toolArguments === 'incremental'
        if (incremental) this.streamCall(this.buffer.slice('<tool_call>'.length, end < 0 ? undefined : end), end >= 0, out)
        if (end < 0) return out
        const block = this.buffer.slice(0, end + '</tool_call>'.length)
        const streamed = incremental && this.argsSent >= 0
        this.argsSent = -1
        const call = streamed ? undefined : parseToolCall(block.slice('<tool_call>'.length, -'</tool_call>'.length).trim())
        if (streamed) {
          // already out as parts
        } else if (call && incremental) {
          ;(out.toolCallParts ??= []).push({ index: this.callsBegun++, name: call.function.name, arguments: JSON.stringify(call.function.arguments) })
        } else if (call) out.toolCalls.push(call)
        else out.content += block
        this.buffer = this.buffer.slice(block.length)
        this.mode = 'content'
      }
    }
  }

  /** At the end of the stream: release whatever was held back. */
  finish(): ChatDelta {
    const rest = this.buffer
    this.buffer = ''
    // A streamed call cut off mid-way (max tokens) stays incomplete: its parts are already out.
    if (this.mode === 'tool' && this.argsSent >= 0) return { content: '', reasoningContent: '', toolCalls: [] }
    if (this.mode === 'tool' && this.opts.forcedNames && this.opts.toolArguments === 'incremental') {
      const cut = cutToolCall(rest.slice('<tool_call>'.length), this.opts.forcedNames)
      return { content: '', reasoningContent: '', toolCalls: [], toolCallParts: [{ index: this.callsBegun++, ...cut }] }
    }
    if (this.mode === 'reasoning') return { content: '', reasoningContent: rest, toolCalls: [] }
    return { content: rest, reasoningContent: '', toolCalls: [] }
  }
}
