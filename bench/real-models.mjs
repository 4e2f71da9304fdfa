// The real Qwen2.5-Coder GGUF files (scripts/fetch-real-models.sh): where they are, fetched on first
// use. Measurement scripts only; `npm test` never needs them.
import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { homedir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const cache = process.env.NANO_QWEN3_CACHE ?? join(homedir(), '.cache', 'nano-qwen3-serving')

export const REAL_MODELS = {
  '0.5b': { file: 'qwen2.5-coder-0.5b-instruct-q4_k_m.gguf', label: 'Qwen2.5-Coder-0.5B-Instruct Q4_K_M' },
  '1.5b': { file: 'qwen2.5-coder-1.5b-instruct-q4_k_m.gguf', label: 'Qwen2.5-Coder-1.5B-Instruct Q4_K_M' },
}

/** Path of the real model `size` ('0.5b' | '1.5b'), downloading and verifying it if missing. */
export function realModel(size) {
  const m = REAL_MODELS[size]
  if (!m) throw new Error(`unknown real model "${size}"; known: ${Object.keys(REAL_MODELS).join(', ')}`)
  const path = join(cache, m.file)
  if (!existsSync(path)) execFileSync(join(root, 'scripts', 'fetch-real-models.sh'), [size], { stdio: 'inherit' })
  return path
}
