// The model side of the example's IPC, independent of Electron: messages in through `port.on`,
// events out through `port.post`.
//   in:  { type: 'load', modelName? } | { type: 'generate', id, prompt, maxTokens?, temperature? } | { type: 'abort', id } | { type: 'dispose' }
//   out: { type: 'ready', model } | { id, type: 'token', text, reasoning } | { id, type: 'done', finishReason, usage } | { id?, type: 'error', message }
// Requests that arrive while others stream are batched by the engine; none waits for another to end.
import { defaultModelDir, ModelRunner } from 'nano-qwen3-serving'

export function serveModel(port) {
  let runner
  const aborts = new Map()

  const generate = async ({ id, prompt, maxTokens = 256, temperature }) => {
    const controller = new AbortController()
    aborts.set(id, controller)
    try {
      await runner.ready
      const messages = [{ role: 'user', content: prompt }]
      const stream = runner.chatStream(messages, { maxTokens, temperature, signal: controller.signal })
      for await (const chunk of stream) {
        if (chunk.content || chunk.reasoningContent) port.post({ id, type: 'token', text: chunk.content, reasoning: chunk.reasoningContent })
      }
      const { finishReason, usage } = await stream.result
      port.post({ id, type: 'done', finishReason, usage })
    } catch (e) {
      port.post({ id, type: 'error', message: e.message })
    } finally {
      aborts.delete(id)
    }
  }

  port.on((m) => {
    if (m.type === 'load') {
      // 'auto': the machine's hardware GPU (Metal, Vulkan, DX12) when there is one and the model
      // fits, else the CPU; never a software adapter. The plan says which it took.
      runner = new ModelRunner({ modelName: m.modelName ?? defaultModelDir(), device: 'auto' })
      runner.ready.then(
        () => port.post({ type: 'ready', model: m.modelName ?? 'embedded tiny model', device: runner.getAccelerationInfo().deviceDetail }),
        (e) => port.post({ type: 'error', message: e.message }),
      )
    } else if (m.type === 'generate') {
      if (!runner) port.post({ id: m.id, type: 'error', message: 'no model loaded' })
      else generate(m)
    } else if (m.type === 'abort') aborts.get(m.id)?.abort()
    else if (m.type === 'dispose') runner?.dispose()
  })
}
