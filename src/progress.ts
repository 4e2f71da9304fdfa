/** Load-time progress reported by the engine (weight quantization, calibration passes). */
export interface LoadProgress {
  /** 'quantize' | 'calibrate' | 'calibrate (smoothed)' */
  stage: string
  done: number
  total: number
  /** What done/total count: 'tensors' or 'tokens'. */
  unit: string
}

/** A progress bar on stderr, redrawn at most every 200 ms; silent when stderr is not a terminal. */
export function loadProgressBar(stream: NodeJS.WriteStream = process.stderr): (p: LoadProgress) => void {
  let last = 0
  return (p) => {
    if (!stream.isTTY) return
    const now = Date.now()
    const done = p.done >= p.total
    if (!done && now - last < 200) return
    last = now
    const frac = p.total ? Math.min(1, p.done / p.total) : 0
    const bar = '#'.repeat(Math.round(frac * 30)).padEnd(30, '-')
    stream.write(`\r${p.stage.padEnd(20)} [${bar}] ${p.done}/${p.total} ${p.unit}${done ? '\n' : ''}`)
  }
}
