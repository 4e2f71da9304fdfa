// The test helpers' temporary directories are gone once their process exits.
import test from 'ava'
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { promisify } from 'node:util'
import { root } from './helpers.mjs'

test('scratchDir folders are removed when the process exits', async (t) => {
  const helper = pathToFileURL(join(root, '__test__', 'scratch.mjs')).href
  const script = `
    import { writeFileSync, mkdirSync } from 'node:fs'
    import { scratchDir } from ${JSON.stringify(helper)}
    const a = scratchDir('nq3-scratch-test-'), b = scratchDir('nq3-scratch-test-')
    mkdirSync(a + '/nested'); writeFileSync(a + '/nested/file', 'x')
    console.log(JSON.stringify([a, b]))`
  const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script])
  const dirs = JSON.parse(stdout)
  t.is(dirs.length, 2)
  t.not(dirs[0], dirs[1])
  for (const d of dirs) t.false(existsSync(d), `${d} left behind`)
})
