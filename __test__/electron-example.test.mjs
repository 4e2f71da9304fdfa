// The Electron example's model side (examples/electron/model-worker.mjs) under plain Node: Electron's
// utilityProcess port is replaced by a MessageChannel, as model-process.mjs replaces it by
// process.parentPort. Electron itself cannot be downloaded here; the release workflow does not run
// it either, so main.js / preload.js / the window are exercised only by hand (`npm start` there).
import test from 'ava'
import { existsSync, mkdirSync, symlinkSync } from 'node:fs'
import { join } from 'node:path'
import { MessageChannel } from 'node:worker_threads'
import { defaultModelDir, ModelRunner } from '../dist/index.mjs'
import { root } from './helpers.mjs'

const example = join(root, 'examples', 'electron')
// What `npm install` does for the example's "file:../.." dependency: a link to this package.
const link = join(example, 'node_modules', 'nano-qwen3-serving')
if (!existsSync(link)) {
  mkdirSync(join(example, 'node_modules'), { recursive: true })
  symlinkSync(join('..', '..', '..'), link, 'dir')
}

function connect() {
  const { port1, port2 } = new MessageChannel()
  const events = []
  const waiters = []
  port1.on('message', (m) => {
    events.push(m)
    for (const w of waiters.splice(0)) w()
  })
  const until = async (predicate) => {
    while (!events.some(predicate)) await new Promise((resolve) => waiters.push(resolve))
    return events.find(predicate)
  }
  return { port1, port2, events, until }
}

test('the model worker streams two concurrent requests, each as the runner answers it, and aborts one', async (t) => {
  const { serveModel } = await import(join(example, 'model-worker.mjs'))
  const { port1, port2, events, until } = connect()
  serveModel({ on: (listener) => port2.on('message', listener), post: (m) => port2.postMessage(m) })
  port1.postMessage({ type: 'load' })
  const ready = await until((m) => m.type === 'ready')
  t.is(ready.model, 'embedded tiny model')
  // device 'auto': the plan says which device it took and why; never a software adapter (lavapipe
  // in CI, where it is the only one: so the CPU).
  t.regex(ready.device, /^device "auto": /, JSON.stringify(ready))
  t.notRegex(ready.device, /a software adapter: correct, not fast/)

  port1.postMessage({ type: 'generate', id: 1, prompt: 'Why is the sky blue?', maxTokens: 12, temperature: 0 })
  port1.postMessage({ type: 'generate', id: 2, prompt: 'Hello', maxTokens: 100000, temperature: 0 })
  await until((m) => m.id === 2 && m.type === 'token')
  port1.postMessage({ type: 'abort', id: 2 })
  const done = await until((m) => m.id === 1 && m.type === 'done')
  const aborted = await until((m) => m.id === 2 && (m.type === 'done' || m.type === 'error'))

  const runner = await ModelRunner.load({ modelName: defaultModelDir() })
  const expected = await runner.chat([{ role: 'user', content: 'Why is the sky blue?' }], { maxTokens: 12, temperature: 0 })
  await runner.dispose()
  const streamed = events.filter((m) => m.id === 1 && m.type === 'token')
  t.is(streamed.map((m) => m.text).join(''), expected.content)
  t.is(streamed.map((m) => m.reasoning).join(''), expected.reasoningContent)
  t.is(done.finishReason, expected.finishReason)
  t.is(done.usage.completionTokens, 12)
  t.is(aborted.type, 'error')
  t.regex(aborted.message, /abort/i)
  port1.postMessage({ type: 'dispose' })
  port1.close()
})

test('a request before any load is answered with an error, not dropped', async (t) => {
  const { serveModel } = await import(join(example, 'model-worker.mjs'))
  const { port1, port2, until } = connect()
  serveModel({ on: (listener) => port2.on('message', listener), post: (m) => port2.postMessage(m) })
  port1.postMessage({ type: 'generate', id: 7, prompt: 'Hi' })
  const answer = await until((m) => m.id === 7)
  t.deepEqual(answer, { id: 7, type: 'error', message: 'no model loaded' })
  port1.close()
})
