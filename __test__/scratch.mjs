// Temporary directories for tests, removed when the test process exits: a test run leaves
// nothing behind in the system's temp folder (it used to leave ~50 MB of copies per run).
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const made = []
process.on('exit', () => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true })
})

/** A fresh directory under the system's temp folder, named `prefix` + random letters. */
export function scratchDir(prefix) {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  made.push(dir)
  return dir
}
