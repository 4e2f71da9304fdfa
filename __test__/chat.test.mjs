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

// Each rule of the split alone, with the exact expected pieces.
const call = (name, args) => ({ type: 'function', function: { name, arguments: args } })

test('whole output: tool-call bodies: string arguments are parsed, missing ones are {}, a nameless or broken call stays content', (t) => {
  t.deepEqual(parseAssistantOutput('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>').toolCalls, [call('f', { a: 1 })])
  t.deepEqual(parseAssistantOutput('<tool_call>{"name": "g"}</tool_call>').toolCalls, [call('g', {})])
  for (const body of ['{"name": 3, "arguments": {}}', '{"name": "h", "arguments": "{oops"}', 'null']) {
    const text = `<tool_call>${body}</tool_call>`
    t.deepEqual(parseAssistantOutput(text), { content: text, reasoningContent: '', toolCalls: [] }, body)
  }
  const two = parseAssistantOutput('<tool_call>{"name": "a"}</tool_call>\n<tool_call>\n{"name": "b", "arguments": {"x": [1]}}\n</tool_call>')
  t.deepEqual(two, { content: '', reasoningContent: '', toolCalls: [call('a', {}), call('b', { x: [1] })] })
})

test('whole output: newlines around reasoning are stripped, content keeps its own; a closing tag alone ends reasoning', (t) => {
  t.deepEqual(parseAssistantOutput('<think>\n\nA\nB\n\n</think>\n\nC\n'), { content: 'C\n', reasoningContent: 'A\nB', toolCalls: [] })
  t.deepEqual(parseAssistantOutput('plan\n</think>\nanswer'), { content: 'answer', reasoningContent: 'plan', toolCalls: [] })
  t.deepEqual(parseAssistantOutput('  <think>\n\nstill'), { content: '', reasoningContent: 'still', toolCalls: [] })
  t.deepEqual(parseAssistantOutput(' not <think> first'), { content: ' not <think> first', reasoningContent: '', toolCalls: [] })
})

test('whole output: content is trimmed only around removed tool calls; toolCalls: false keeps the markup', (t) => {
  t.is(parseAssistantOutput('  text  ').content, '  text  ')
  t.is(parseAssistantOutput(' Sure. <tool_call>{"name": "f"}</tool_call> ').content, 'Sure.')
  const markup = '<think>r</think>Sure. <tool_call>{"name": "f"}</tool_call>'
  t.deepEqual(parseAssistantOutput(markup, { toolCalls: false }), {
    content: 'Sure. <tool_call>{"name": "f"}</tool_call>',
    reasoningContent: 'r',
    toolCalls: [],
  })
})

test('streamed: each delta holds back exactly what may still become a tag or trailing newlines', (t) => {
  const s = new ChatStreamSplitter()
  const d = (text) => {
    const r = s.push(text)
    return [r.reasoningContent, r.content]
  }
  t.deepEqual(d(' <thi'), ['', '']) // may still be <think>
  t.deepEqual(d('nk>\n\n'), ['', '']) // leading newlines of the reasoning are dropped
  t.deepEqual(d('abc\n'), ['abc', '']) // a newline that may precede </think> waits
  t.deepEqual(d('\nde</th'), ['\n\nde', '']) // released once text follows; a partial tag waits
  t.deepEqual(d('ink>\n\nHi <tool'), ['', 'Hi ']) // newlines after </think> dropped; a partial <tool_call> waits
  t.deepEqual(d('box>'), ['', '<toolbox>'])
  t.deepEqual(s.finish(), { content: '', reasoningContent: '', toolCalls: [] })
})

test('streamed: a start that cannot become <think> is content at once; finish releases what was held', (t) => {
  const s = new ChatStreamSplitter()
  t.deepEqual(s.push('<'), { content: '', reasoningContent: '', toolCalls: [] })
  t.deepEqual(s.push('b>'), { content: '<b>', reasoningContent: '', toolCalls: [] })
  t.deepEqual(s.push(' <tool_c'), { content: ' ', reasoningContent: '', toolCalls: [] })
  t.deepEqual(s.finish(), { content: '<tool_c', reasoningContent: '', toolCalls: [] })
  const r = new ChatStreamSplitter()
  t.is(r.push('<think>cut off\n').reasoningContent, 'cut off')
  t.deepEqual(r.finish(), { content: '', reasoningContent: '\n', toolCalls: [] })
})

test('streamed: toolCalls: false passes tool-call markup through as content', (t) => {
  const s = new ChatStreamSplitter({ toolCalls: false })
  const text = 'A <tool_call>{"name": "f"}</tool_call>'
  let content = ''
  for (const ch of text) {
    const d = s.push(ch)
    t.deepEqual(d.toolCalls, [])
    content += d.content
  }
  t.is(content + s.finish().content, text)
})

test('incremental tool calls: escaped names, and the closing brace and whitespace never leak into the arguments', (t) => {
  const s = new ChatStreamSplitter({ toolArguments: 'incremental' })
  const parts = []
  for (const piece of ['<tool_call>{"name": "say \\"hi\\"", "arguments": ', '{"a": 1', '}  \n', '}\n</tool_call>'])
    parts.push(...(s.push(piece).toolCallParts ?? []))
  t.deepEqual(parts, [
    { index: 0, name: 'say "hi"', arguments: '' },
    { index: 0, arguments: '{"a": 1' },
    { index: 0, arguments: '}' },
  ])
  t.deepEqual(s.finish(), { content: '', reasoningContent: '', toolCalls: [] })
  // Cut off inside a streamed call: what was sent stays sent, nothing more comes.
  const cut = new ChatStreamSplitter({ toolArguments: 'incremental' })
  t.deepEqual(cut.push('<tool_call>{"name": "f", "arguments": {"q": "x').toolCallParts, [
    { index: 0, name: 'f', arguments: '' },
    { index: 0, arguments: '{"q": "x' },
  ])
  t.deepEqual(cut.finish(), { content: '', reasoningContent: '', toolCalls: [] })
})

test('whole and streamed in one piece: a closing tag at the very start, and newlines inside reasoning and content are kept', (t) => {
  const cases = [
    ['</think>answer', { content: 'answer', reasoningContent: '' }],
    ['<think>A\nB\n\n</think>C\nD', { content: 'C\nD', reasoningContent: 'A\nB' }],
    ['<think>still\ngoing', { content: '', reasoningContent: 'still\ngoing' }],
  ]
  for (const [text, expected] of cases) {
    t.deepEqual(parseAssistantOutput(text), { ...expected, toolCalls: [] }, text)
    const s = new ChatStreamSplitter()
    const first = s.push(text)
    const rest = s.finish()
    if (!text.startsWith('</think>')) t.deepEqual({ content: first.content + rest.content, reasoningContent: first.reasoningContent + rest.reasoningContent }, expected, text)
  }
})

test('streamed: reasoning is released to its last character; a closing tag that starts a push is held whole', (t) => {
  const s = new ChatStreamSplitter()
  t.is(s.push('<think>xyz').reasoningContent, 'xyz')
  t.deepEqual(s.push('</thi'), { content: '', reasoningContent: '', toolCalls: [] })
  t.deepEqual(s.push('nk>x'), { content: 'x', reasoningContent: '', toolCalls: [] })
})

test('incremental tool calls: any whitespace inside the head, and a body that is not a call head stays content', (t) => {
  const s = new ChatStreamSplitter({ toolArguments: 'incremental' })
  const parts = s.push('<tool_call>\n{  "name"  :\t"f"  ,\n  "arguments"  :  {"a": 1}').toolCallParts
  t.deepEqual(parts, [
    { index: 0, name: 'f', arguments: '' },
    { index: 0, arguments: '{"a": 1' },
  ])
  const junk = new ChatStreamSplitter({ toolArguments: 'incremental' })
  const text = '<tool_call>x {"name": "f", "arguments": {}}</tool_call>'
  const d = junk.push(text)
  t.deepEqual(d.toolCallParts ?? [], [])
  t.is(d.content, text)
})

test('streamed in one push: content and a whole call together; a call cut off at the end is released as content', (t) => {
  const s = new ChatStreamSplitter()
  const d = s.push('Hi <tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call> bye')
  t.deepEqual(d.toolCalls, [call('f', { a: 1 })])
  t.is(d.content + s.finish().content, 'Hi  bye')
  const cut = new ChatStreamSplitter()
  t.is(cut.push('<tool_call>{"name": "f"').content, '')
  t.deepEqual(cut.finish(), { content: '<tool_call>{"name": "f"', reasoningContent: '', toolCalls: [] })
})

test('incremental tool calls: calls are numbered in order, whole ones too, and finish releases a held partial tag', (t) => {
  const s = new ChatStreamSplitter({ toolArguments: 'incremental' })
  // One push per call: the whole one (arguments before its name) starts its push's parts.
  const calls = ['{"name": "a", "arguments": {}}', '{"arguments": {}, "name": "b"}', '{"name": "c", "arguments": {}}']
  const parts = calls.flatMap((c) => s.push(`<tool_call>${c}</tool_call>`).toolCallParts ?? [])
  t.true(parts.every((p) => typeof p.index === 'number'), JSON.stringify(parts))
  t.deepEqual(parts.filter((p) => p.name).map((p) => `${p.index}:${p.name}`), ['0:a', '1:b', '2:c'])
  // No whitespace at all in the head: still streamed (the name first, then the arguments as written).
  const tight = new ChatStreamSplitter({ toolArguments: 'incremental' }).push('<tool_call>{"name":"f","arguments":{"x": 1}}</tool_call>').toolCallParts
  t.deepEqual(tight[0], { index: 0, name: 'f', arguments: '' })
  t.is(tight.map((p) => p.arguments).join(''), '{"x": 1}')
  const held = new ChatStreamSplitter({ toolArguments: 'incremental' })
  t.is(held.push('text <tool_').content, 'text ')
  t.deepEqual(held.finish(), { content: '<tool_', reasoningContent: '', toolCalls: [] })
})
