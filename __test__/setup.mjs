// Runs in every ava worker before its tests: prepared weights (static_int8 / int4 loads) go to a
// fresh directory per test file (removed when the worker exits), so no test depends on what
// another run left in the user's cache.
import { scratchDir } from './scratch.mjs'

process.env.NANO_QWEN3_WEIGHT_CACHE_DIR = scratchDir('nq3-weight-cache-')
