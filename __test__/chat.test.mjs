// Parsing Qwen3 output into content, <think> reasoning and <tool_call> blocks, whole and streamed.
import test from 'ava'
import { ChatStreamSplitter, parseAssistantOutput } from '../dist/index.mjs'

const thinking = '<think>\nThe user greets.\n</think>\n\nHello there!'
const withTool =
  '<think>\nNeed weather.\n</think>\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'

test('whole output: reasoning and content', (t) => {
  t.deepEqual(parseAssistantOutput(thinking), { content: 'Hello there!', reasoningContent: 'The user greets.', toolCalls: [] })
  t.deepEqual(parseAssistantOutput('Just text'), { content: 'Just text', reasoningContent: '', toolCalls: [] })
  t.deepEqual(parseAssistantOutput('<think>\nstill going'), { content: '', reasoningContent: 'still going', toolCalls: [] })
})

test('whole output: tool calls are parsed, bad JSON stays in content', (t) => {
  const r = parseAssistantOutput(withTool)
  t.deepEqual(r.toolCalls, [{ type: 'function', function: { name: 'get_weather', arguments: { city: 'Paris' } } }])
  t.is(r.content, '')
  t.is(r.reasoningContent, 'Need weather.')
  const bad = parseAssistantOutput('<tool_call>\n{oops}\n</tool_call>')
  t.deepEqual(bad.toolCalls, [])
  t.true(bad.content.includes('{oops}'))
})

test('streamed in every split gives the same result as the whole parse', (t) => {
  for (const text of [thinking, withTool, 'plain answer <tool_', 'x']) {
    for (let size = 1; size <= 7; size++) {
      const s = new ChatStreamSplitter()
      const acc = { content: '', reasoningContent: '', toolCalls: [] }
      const add = (d) => {
        acc.content += d.content
        acc.reasoningContent += d.reasoningContent
        acc.toolCalls.push(...d.toolCalls)
      }
      for (let i = 0; i < text.length; i += size) add(s.push(text.slice(i, i + size)))
      add(s.finish())
      const whole = parseAssistantOutput(text)
      t.is(acc.reasoningContent, whole.reasoningContent, `${JSON.stringify(text)} by ${size}`)
      t.is(acc.content.trim(), whole.content.trim(), `${JSON.stringify(text)} by ${size}`)
      t.deepEqual(acc.toolCalls, whole.toolCalls)
    }
  }
})
