// Electron's main process: opens the window and starts the model in a utilityProcess (a separate
// Node.js process that Electron manages), so neither this process nor the renderer ever waits on
// the model. Requests go window -> main (ipcMain.handle) -> model process (postMessage); tokens come
// back the same way, tagged with the request id.
const { app, BrowserWindow, ipcMain, utilityProcess } = require('electron')
const { join } = require('node:path')

let model
let nextId = 1
const pending = new Map() // request id -> the window's webContents

function startModel() {
  // MODEL may name a hub id, a folder or a .gguf file; without it the package's tiny embedded model.
  model = utilityProcess.fork(join(__dirname, 'model-process.mjs'), [], { serviceName: 'qwen3-model' })
  model.on('message', (m) => {
    const target = pending.get(m.id)
    if (!target || target.isDestroyed()) return
    target.send('qwen:event', m)
    if (m.type === 'done' || m.type === 'error') pending.delete(m.id)
  })
  model.on('exit', (code) => {
    for (const [id, target] of pending) if (!target.isDestroyed()) target.send('qwen:event', { id, type: 'error', message: `model process exited (${code})` })
    pending.clear()
  })
  model.postMessage({ type: 'load', modelName: process.env.MODEL })
}

ipcMain.handle('qwen:generate', (event, prompt) => {
  if (typeof prompt !== 'string' || prompt.length === 0 || prompt.length > 100_000) throw new Error('prompt: a non-empty string of at most 100,000 characters')
  const id = nextId++
  pending.set(id, event.sender)
  model.postMessage({ type: 'generate', id, prompt, maxTokens: 256 })
  return id
})
ipcMain.on('qwen:abort', (_event, id) => model.postMessage({ type: 'abort', id }))

app.whenReady().then(() => {
  startModel()
  const win = new BrowserWindow({
    width: 720,
    height: 560,
    webPreferences: { preload: join(__dirname, 'preload.js'), contextIsolation: true, sandbox: true },
  })
  win.loadFile(join(__dirname, 'index.html'))
})
app.on('window-all-closed', () => {
  model?.postMessage({ type: 'dispose' })
  app.quit()
})
