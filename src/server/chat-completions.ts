/** POST /v1/chat/completions: the chat template, reasoning split from <think>, tool calls, structured outputs. */
import { ChatStreamSplitter, type ChatMessage, cutToolCall, parseAssistantOutput, type ToolCall } from '../chat.js'
import type { ModelRunner } from '../model-runner.js'
import type { FastifyReply } from 'fastify'
import type { GenerateResult, GenerationParams } from '../params.js'
import { chatLogprobs, choiceParams, newId, runChoice, StreamUsage, totalUsage } from './generation.js'
import { badRequest, errorBody, toHttpError } from './http-error.js'
import type { Metrics } from './metrics.js'
import { type ChatRequest, generationParams } from './requests.js'
import { SseWriter } from './sse.js'
import { chatConstraint, type Constraint, fromField } from './constraints.js'

export interface RequestContext {
  runner: ModelRunner
  modelName: string
  metrics: Metrics
  /** Aborted when the client goes away, or by `abort()` when one choice of several fails. */
  signal: AbortSignal
  abort: () => void
  /** Set by `abort()`: the request failed (rather than its client leaving). */
  failed: boolean
  started: number
  /** Structured outputs generate only the object keys a schema names (ServerOptions.strictSchemas). */
  strictSchemas: boolean
}

/** OpenAI messages to the template's: text parts joined, tool-call arguments as objects. */
export function templateMessages(messages: ChatRequest['messages']): ChatMessage[] {
  return messages.map((m, i) => {
    const content = typeof m.content === 'string' ? m.content : Array.isArray(m.content) ? m.content.map((p) => p.text).join('') : ''
    const { tool_calls, reasoning_content, ...rest } = m
    const out: ChatMessage = { ...rest, role: m.role === 'developer' ? 'system' : m.role, content }
    if (reasoning_content) out.reasoning_content = reasoning_content
    if (tool_calls) {
      out.tool_calls = tool_calls.map((c, j) => {
        const f = (c as { function?: { name?: unknown; arguments?: unknown } }).function
        if (!f || typeof f.name !== 'string') throw badRequest(`invalid messages[${i}].tool_calls[${j}]: a { type: "function", function: { name, arguments } }`, `messages[${i}].tool_calls`)
        let args = f.arguments
        if (typeof args === 'string') {
          try {
            args = JSON.parse(args)
          } catch {
            throw badRequest(`invalid messages[${i}].tool_calls[${j}].function.arguments: not JSON`, `messages[${i}].tool_calls`)
          }
        }
        return { type: 'function', function: { name: f.name, arguments: args as Record<string, unknown> } }
      })
    }
    return out
  })
}

/** OpenAI's call ids look like `call_...`. */
const callId = () => newId('call').replace('-', '_')

const toolCallJson = (calls: ToolCall[]) =>
  calls.map((c) => ({ id: callId(), type: 'function' as const, function: { name: c.function.name, arguments: JSON.stringify(c.function.arguments) } }))

export async function chatCompletions(r: ChatRequest, ctx: RequestContext, reply: FastifyReply, send: (body: unknown) => void) {
  const constraint = chatConstraint(r, ctx.strictSchemas)
  try {
    await respond(r, ctx, reply, send, constraint)
  } catch (e) {
    throw fromField(e, constraint)
  }
}

async function respond(r: ChatRequest, ctx: RequestContext, reply: FastifyReply, send: (body: unknown) => void, constraint: Constraint | undefined) {
  const grammar = constraint?.grammar
  const forcedNames = constraint?.forcedNames
  const toolsOn = r.tool_choice !== 'none' && r.tools?.length ? r.tools : undefined
  // A constrained answer starts with its structure: no reasoning before it.
  const enableThinking = grammar ? false : r.chat_template_kwargs?.enable_thinking
  const prompt = ctx.runner.applyChatTemplate(templateMessages(r.messages), { addGenerationPrompt: true, enableThinking, tools: toolsOn })
  const logprobs = r.logprobs ? (r.top_logprobs ?? 0) : undefined
  const params: GenerationParams = { ...generationParams(r, r.max_completion_tokens ?? r.max_tokens ?? undefined, logprobs), grammar }
  const n = r.n ?? 1
  const id = newId('chatcmpl')
  const created = Math.floor(Date.now() / 1000)
  const base = { id, created, model: ctx.modelName, system_fingerprint: null }
  // Cut by max_tokens is 'length' even inside a tool call (as OpenAI answers).
  const finish = (res: GenerateResult, calls: number) => (res.finishReason === 'length' ? 'length' : calls > 0 ? 'tool_calls' : res.finishReason)

  if (!r.stream) {
    const results = await Promise.all(choiceParams(params, n).map((p) => runChoice(ctx.runner, prompt, p, ctx, () => {})))
    const choices = results.map((res, index) => {
      const parsed = parseAssistantOutput(res.text, { toolCalls: !!toolsOn })
      if (forcedNames && !parsed.toolCalls.length) {
        // A forced call cut by max_tokens: still a call, with its arguments as far as they got.
        const cut = cutToolCall(res.text.replace(/^\s*<tool_call>/, ''), forcedNames)
        const message = { role: 'assistant', content: null, tool_calls: [{ id: callId(), type: 'function', function: cut }] }
        return { index, message, logprobs: chatLogprobs(res.logprobs), finish_reason: finish(res, 1) }
      }
      const message: Record<string, unknown> = { role: 'assistant', content: parsed.toolCalls.length && !parsed.content ? null : parsed.content }
      if (parsed.reasoningContent) message.reasoning_content = parsed.reasoningContent
      if (parsed.toolCalls.length) message.tool_calls = toolCallJson(parsed.toolCalls)
      return { index, message, logprobs: chatLogprobs(res.logprobs), finish_reason: finish(res, parsed.toolCalls.length) }
    })
    send({ ...base, object: 'chat.completion', choices, usage: totalUsage(results) })
    return
  }

  const sse = new SseWriter(reply)
  const usage = StreamUsage.of(r.stream_options, () => ctx.runner.tokenize(prompt).length)
  const chunk = (choices: unknown[]) => sse.send({ ...base, object: 'chat.completion.chunk', choices, ...usage.field() })
  try {
    const results = await Promise.all(
      choiceParams(params, n).map(async (p, index) => {
        const splitter = new ChatStreamSplitter({ toolCalls: !!toolsOn, toolArguments: 'incremental', forcedNames })
        let calls = 0
        let first = true
        const emit = (d: ReturnType<ChatStreamSplitter['push']>, lp: GenerateResult['logprobs']) => {
          // The role first, once per choice (sent with the first output: an error before it is a plain 4xx).
          if (first) {
            first = false
            chunk([{ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }])
          }
          const delta: Record<string, unknown> = {}
          if (d.reasoningContent) delta.reasoning_content = d.reasoningContent
          if (d.content) delta.content = d.content
          if (d.toolCallParts?.length) {
            // OpenAI's shape: the first delta of a call has its id, type and name; the rest extend its arguments.
            delta.tool_calls = d.toolCallParts.map((p) =>
              p.name !== undefined
                ? { index: p.index, id: callId(), type: 'function', function: { name: p.name, arguments: p.arguments } }
                : { index: p.index, function: { arguments: p.arguments } },
            )
            calls += d.toolCallParts.filter((p) => p.name !== undefined).length
          }
          if (Object.keys(delta).length || lp?.length) chunk([{ index, delta, logprobs: chatLogprobs(lp), finish_reason: null }])
        }
        const res = await runChoice(ctx.runner, prompt, p, ctx, (c) => {
          usage.add(c.tokenIds.length)
          emit(splitter.push(c.text), c.logprobs)
        })
        emit(splitter.finish(), undefined)
        chunk([{ index, delta: {}, logprobs: null, finish_reason: finish(res, calls) }])
        return res
      }),
    )
    if (usage.final) sse.send({ ...base, object: 'chat.completion.chunk', choices: [], usage: totalUsage(results) })
    sse.end()
  } catch (e) {
    const clientGone = ctx.signal.aborted && !ctx.failed
    ctx.abort() // the other choices of a failed request
    // Once events have gone out the status is sent: the error becomes the last event.
    if (!sse.end(clientGone ? undefined : errorBody(toHttpError(e)))) throw e
  }
}
