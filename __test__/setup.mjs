// Runs in every ava worker before its tests: prepared weights (static_int8 / int4 loads) go to a
// fresh directory per test file, so no test depends on what another run left in the user's cache.
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

process.env.NANO_QWEN3_WEIGHT_CACHE_DIR = mkdtempSync(join(tmpdir(), 'nq3-weight-cache-'))
