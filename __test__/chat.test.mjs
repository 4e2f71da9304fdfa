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

test('incremental tool calls: the name first, then arguments as written, reassembling exactly at every chunk size', (t) => {
  const text =
    'Sure.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris }", "n": {"a": [1, 2]}}}\n</tool_call>\n' +
    '<tool_call>\n{"arguments": {"x": 1}, "name": "f"}\n</tool_call>'
  for (let step = 1; step <= 9; step++) {
    const s = new ChatStreamSplitter({ toolArguments: 'incremental' })
    const parts = []
    let content = ''
    for (let i = 0; i < text.length; i += step) {
      const d = s.push(text.slice(i, i + step))
      parts.push(...(d.toolCallParts ?? []))
      content += d.content
      t.deepEqual(d.toolCalls, [])
    }
    content += s.finish().content
    t.is(content, 'Sure.\n', `step ${step}`)
    t.deepEqual(parts[0], { index: 0, name: 'get_weather', arguments: '' })
    const args = (i) => parts.filter((p) => p.index === i).map((p) => p.arguments).join('')
    t.is(args(0), '{"city": "Paris }", "n": {"a": [1, 2]}}', `step ${step}`)
    if (step === 1) t.true(parts.filter((p) => p.index === 0).length > 10, 'arguments arrive in many parts')
    // A call whose arguments come before its name cannot stream: it comes whole when it closes.
    t.deepEqual(parts.filter((p) => p.index === 1), [{ index: 1, name: 'f', arguments: '{"x":1}' }])
  }
})
