// The window: sends the prompt and appends tokens as they arrive; the model never runs here.
const $ = (id) => document.getElementById(id)
let current

window.qwen.onEvent((m) => {
  if (m.type === 'ready') $('status').textContent = `model: ${m.model}`
  if (m.id !== current) return
  if (m.type === 'token') $('output').textContent += m.text ?? ''
  if (m.type === 'done' || m.type === 'error') {
    $('status').textContent = m.type === 'done' ? `${m.finishReason}, ${m.usage?.completionTokens ?? 0} tokens` : m.message
    $('stop').disabled = true
    current = undefined
  }
})

$('send').onclick = async () => {
  $('output').textContent = ''
  $('stop').disabled = false
  current = await window.qwen.generate($('prompt').value)
}
$('stop').onclick = () => current && window.qwen.abort(current)
