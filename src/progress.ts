/** Load-time progress reported by the engine (weight quantization, calibration passes). */
export type { LoadProgress } from './native.js'
import type { LoadProgress } from './native.js'

/**
 * A one-line progress bar, redrawn at most every 200 ms. On a terminal it redraws in place; elsewhere
 * it prints only the finished line, or nothing when `finalLineOffTty` is false.
 */
export function progressBar(finalLineOffTty: boolean, stream: NodeJS.WriteStream = process.stderr) {
  let last = 0
  return (label: string, frac: number, detail: string, done: boolean) => {
    const now = Date.now()
    if (!done && now - last < 200) return
    last = now
    const bar = '#'.repeat(Math.round(Math.min(1, frac) * 30)).padEnd(30, '-')
    const line = `${label} [${bar}] ${detail}`
    if (stream.isTTY) stream.write(`\r${line}${done ? '\n' : ''}`)
    else if (done && finalLineOffTty) stream.write(`${line}\n`)
  }
}

/** Load progress on stderr; silent when stderr is not a terminal. */
export function loadProgressBar(stream: NodeJS.WriteStream = process.stderr): (p: LoadProgress) => void {
  const draw = progressBar(false, stream)
  return (p) => draw(p.stage.padEnd(20), p.total ? p.done / p.total : 0, `${p.done}/${p.total} ${p.unit}`, p.done >= p.total)
}
