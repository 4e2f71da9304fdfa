// The window's only door to the model: start a request, abort it, and receive its events.
const { contextBridge, ipcRenderer } = require('electron')

contextBridge.exposeInMainWorld('qwen', {
  generate: (prompt) => ipcRenderer.invoke('qwen:generate', prompt),
  abort: (id) => ipcRenderer.send('qwen:abort', id),
  onEvent: (callback) => ipcRenderer.on('qwen:event', (_event, m) => callback(m)),
})
