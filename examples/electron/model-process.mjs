// The model, in an Electron utilityProcess: `process.parentPort` carries the requests from the main
// process and the tokens back. The protocol lives in model-worker.mjs (tested under plain Node).
import { serveModel } from './model-worker.mjs'

serveModel({
  on: (listener) => process.parentPort.on('message', (event) => listener(event.data)),
  post: (message) => process.parentPort.postMessage(message),
})
