// A hostile hub (or caller) must not place files outside the HF cache: the commit sha, the revision and
// every file name are checked before they become paths, sizes and LFS sha256 before a file is kept, and
// a later good download still works. Each test lists its whole temp folder to show what was written.
// The hub runs on 127.0.0.1 like the one in hub.test.mjs, with answers each test can make hostile.
import test from 'ava'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { join, relative } from 'node:path'
import { downloadFromHub, findInCache, ModelRunner, resolveModel } from '../dist/index.mjs'
import { fixtureDir } from './helpers.mjs'
import { scratchDir } from './scratch.mjs'

const SHA = '0123456789abcdef0123456789abcdef01234567'
const REPO = 'evil/model'
const FILES = ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']
const TOKEN = 'secret-token'
const bytes = Object.fromEntries(FILES.map((f) => [f, readFileSync(join(fixtureDir, f))]))

/** The listing a real hub gives with ?blobs=true: a size for every file, sha256 + size for LFS ones. */
function goodSiblings() {
  return FILES.map((rfilename) => {
    const size = bytes[rfilename].length
    if (!rfilename.endsWith('.safetensors')) return { rfilename, size }
    return { rfilename, size, lfs: { sha256: createHash('sha256').update(bytes[rfilename]).digest('hex'), size } }
  })
}

/**
 * A hub whose answers the test sets in `hub.state`: `answer(revision)` gives the revision answer,
 * `body(file)` the bytes served (with a content-length unless `chunked`), `redirect(file)` a URL to
 * send the download to instead. `requests` records every URL asked.
 */
function startHub() {
  const hub = { requests: [], state: {} }
  hub.reset = () => {
    hub.requests.length = 0
    hub.state = { answer: () => ({ id: REPO, sha: SHA, siblings: goodSiblings() }), body: (f) => bytes[f], chunked: false, redirect: () => undefined }
  }
  hub.reset()
  hub.server = createServer((req, res) => {
    hub.requests.push(req.url)
    if (req.headers.authorization !== `Bearer ${TOKEN}`) return res.writeHead(401).end('unauthorized')
    const info = /^\/api\/models\/evil\/model\/revision\/([^/?]+)\?blobs=true$/.exec(req.url)
    if (info) {
      res.writeHead(200, { 'content-type': 'application/json' })
      return res.end(JSON.stringify(hub.state.answer(decodeURIComponent(info[1]))))
    }
    // Like a hostile hub, serve a model file at any URL ending in its name (whatever sha or path led there).
    const file = decodeURIComponent(req.url.split('/').at(-1))
    if (FILES.includes(file)) {
      const to = hub.state.redirect(file)
      if (to) return res.writeHead(302, { location: to }).end()
      const body = hub.state.body(file)
      res.writeHead(200, hub.state.chunked ? {} : { 'content-length': body.length })
      return res.end(body)
    }
    res.writeHead(404).end('not found')
  })
  return new Promise((resolve) =>
    hub.server.listen(0, '127.0.0.1', () => resolve(Object.assign(hub, { url: `http://127.0.0.1:${hub.server.address().port}` }))),
  )
}

/** A fresh temp folder with the HF cache inside it at `cache/`; nothing should ever appear beside it. */
function freshRoot(hub) {
  const root = scratchDir('hf-hostile-')
  process.env.HF_HUB_CACHE = join(root, 'cache')
  process.env.HF_ENDPOINT = hub.url
  process.env.HF_TOKEN = TOKEN
  return root
}

/** Every file under `dir`, relative, sorted. */
function listFiles(dir, base = dir) {
  if (!existsSync(dir)) return []
  return readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? listFiles(join(dir, e.name), base) : [relative(base, join(dir, e.name))]))
    .sort()
}

const snapshotFiles = (files = FILES) => files.map((f) => `cache/models--evil--model/snapshots/${SHA}/${f}`)

/** The good answer again: the download works, every file lands in the cache (besides the test's own `planted`). */
async function goodDownloadWorks(t, hub, root, opts = {}, planted = []) {
  hub.reset()
  const snap = await resolveModel(REPO, { onProgress: false, ...opts })
  t.is(snap, join(root, 'cache', 'models--evil--model', 'snapshots', SHA))
  for (const f of FILES) t.true(readFileSync(join(snap, f)).equals(bytes[f]), f)
  const written = listFiles(root).filter((f) => !planted.includes(f))
  t.true(written.every((f) => f.startsWith('cache/models--evil--model/')), written.join(', '))
  t.is(findInCache(REPO, opts.revision), snap)
}

let hub
test.before(async () => {
  hub = await startHub()
})
test.after.always(() => {
  hub.server.close()
})
test.beforeEach(() => hub.reset())

test.serial('a hub answer whose commit sha is a path is refused before anything is written', async (t) => {
  const root = freshRoot(hub)
  const hostile = [
    `../../../../../../../../${root}/escaped`, // the answer: files would land in <root>/escaped
    `${root}/escaped`,
    '../../..',
    'main',
    SHA.toUpperCase(),
    `${SHA}/..`,
    SHA.slice(1),
    42,
  ]
  for (const sha of hostile) {
    hub.requests.length = 0
    hub.state.answer = () => ({ id: REPO, sha, siblings: goodSiblings() })
    const e = await t.throwsAsync(ModelRunner.load({ modelName: REPO, onDownloadProgress: false }), { code: 'DOWNLOAD_FAILED' })
    t.true(e?.message.includes(`invalid commit sha ${JSON.stringify(sha)}: expected 40 lowercase hex characters`), e?.message)
    t.deepEqual(listFiles(root), [], `sha ${sha}`)
    t.is(hub.requests.length, 1, 'only the listing was asked for, no file')
  }
  await goodDownloadWorks(t, hub, root)
  t.deepEqual(listFiles(root), ['cache/models--evil--model/refs/main', ...snapshotFiles()])
})

test.serial('a revision that is not a git ref name or a sha is refused: no ref file is read or written outside the cache', async (t) => {
  const root = freshRoot(hub)
  // A file the revision would overwrite with the sha (refs/ is three folders below root).
  writeFileSync(join(root, 'victim.txt'), 'keep me')
  const hostile = [
    '../../../victim.txt',
    '../../../../../../../../../../tmp/victim',
    `${root}/victim.txt`,
    'refs/../../victim',
    '..',
    '.hidden',
    'a/.x',
    'x.lock',
    'a//b',
    'trailing/',
    'dot.',
    'a\\b',
    'has space',
    'a:b',
    'q?',
    'star*',
    'br[ack',
    'ti~1',
    'ca^2',
    'at@{1}',
    '@',
    'nul\u0000',
    '',
  ]
  for (const revision of hostile) {
    const e = await t.throwsAsync(resolveModel(REPO, { revision, onProgress: false }), { code: 'DOWNLOAD_FAILED' })
    t.true(e?.message.includes(`invalid revision ${JSON.stringify(revision)}`), e?.message)
    t.regex(String(e?.message), /expected a branch or tag name by git's rules, or a 40-hex commit sha/)
    // downloadFromHub (exported) checks it too, before asking the hub.
    await t.throwsAsync(downloadFromHub(REPO, { revision, onProgress: false }), { code: 'DOWNLOAD_FAILED', message: /invalid revision/ })
  }
  t.deepEqual(hub.requests, [], 'the hub was never asked')
  t.is(readFileSync(join(root, 'victim.txt'), 'utf8'), 'keep me')
  t.deepEqual(listFiles(root), ['victim.txt'])
  // Branch and tag names by git's rules (with '/' folders, as the hub's refs/pr/N) and shas work.
  for (const revision of ['main', 'v1.0', 'refs/pr/1', 'feature/x-y_z', SHA]) await goodDownloadWorks(t, hub, root, { revision }, ['victim.txt'])
  t.deepEqual(listFiles(root), [
    'cache/models--evil--model/refs/feature/x-y_z',
    'cache/models--evil--model/refs/main',
    'cache/models--evil--model/refs/refs/pr/1',
    'cache/models--evil--model/refs/v1.0',
    ...snapshotFiles(),
    'victim.txt',
  ])
  t.is(readFileSync(join(root, 'cache/models--evil--model/refs/refs/pr/1'), 'utf8'), SHA)
})

test.serial('a hub listing with a path-like file name (.., absolute, drive letter, Windows separator) is refused whole', async (t) => {
  const root = freshRoot(hub)
  const hostile = [
    '..\\..\\..\\..\\escaped.safetensors', // a separator on Windows: would climb out of the snapshot there
    'sub\\model.safetensors',
    'C:evil.safetensors',
    'c:\\evil.safetensors',
    '/abs/evil.safetensors',
    `${root}/abs.safetensors`,
    '../evil.safetensors',
    '../../../../config.json',
    'a/../../evil.safetensors',
    './config.json',
    'a//b.safetensors',
    'x\u0000.safetensors',
    '',
    null,
  ]
  for (const name of hostile) {
    hub.requests.length = 0
    hub.state.answer = () => ({ id: REPO, sha: SHA, siblings: [...goodSiblings(), { rfilename: name, size: 1 }] })
    const e = await t.throwsAsync(resolveModel(REPO, { onProgress: false }), { code: 'DOWNLOAD_FAILED' })
    t.true(e?.message.includes(`invalid file name ${JSON.stringify(name)}`), e?.message)
    t.regex(String(e?.message), /expected a relative path with '\/' between folders, no '\.\.', no '\\', no drive letter/)
    t.deepEqual(listFiles(root), [], `name ${JSON.stringify(name)}`)
    t.is(hub.requests.length, 1, 'only the listing was asked for, no file')
  }
  await goodDownloadWorks(t, hub, root)
})

test.serial("a file whose size or LFS sha256 differs from the hub's listing is deleted, not kept", async (t) => {
  const root = freshRoot(hub)
  const cases = [
    {
      what: 'a size the listing does not give',
      set: () => {
        const siblings = goodSiblings().map((s) => (s.rfilename === 'tokenizer.json' ? { ...s, size: s.size + 1 } : s))
        hub.state.answer = () => ({ id: REPO, sha: SHA, siblings })
      },
      bad: 'tokenizer.json',
      message: `tokenizer.json: got ${bytes['tokenizer.json'].length} bytes, the hub lists ${bytes['tokenizer.json'].length + 1}`,
    },
    {
      what: 'more bytes than listed, without a content-length: stopped as soon as it outgrows the listing',
      set: () => {
        hub.state.chunked = true
        hub.state.body = (f) => (f === 'model.safetensors' ? Buffer.concat([bytes[f], Buffer.alloc(1 << 20)]) : bytes[f])
      },
      bad: 'model.safetensors',
      message: `model.safetensors: got more than ${bytes['model.safetensors'].length} bytes, the hub lists ${bytes['model.safetensors'].length}`,
    },
    {
      what: 'the same size, one byte changed',
      set: () => {
        hub.state.body = (f) => {
          if (f !== 'model.safetensors') return bytes[f]
          const b = Buffer.from(bytes[f])
          b[b.length - 1] ^= 1
          return b
        }
      },
      bad: 'model.safetensors',
      message: `does not match the hub's ${goodSiblings()[2].lfs.sha256}`,
    },
  ]
  for (const c of cases) {
    const dir = mkdtempSync(join(root, 'case-'))
    process.env.HF_HUB_CACHE = join(dir, 'cache')
    hub.reset()
    c.set()
    const e = await t.throwsAsync(resolveModel(REPO, { onProgress: false }), { code: 'DOWNLOAD_FAILED' }, c.what)
    t.true(e?.message.includes(c.message), `${c.what}: ${e?.message}`)
    // The files before the bad one are kept in the snapshot; the bad one and its partial are gone.
    const kept = listFiles(dir)
    t.true(kept.length > 0 && kept.every((f) => f.startsWith(`cache/models--evil--model/snapshots/${SHA}/`)), kept.join(', '))
    t.false(kept.some((f) => f.endsWith(c.bad) || f.endsWith('.incomplete')), kept.join(', '))
    t.false(existsSync(join(dir, 'cache/models--evil--model/refs/main')), 'no ref to an incomplete snapshot')
    await goodDownloadWorks(t, hub, dir)
    t.deepEqual(listFiles(dir), ['cache/models--evil--model/refs/main', ...snapshotFiles()])
  }
  t.deepEqual(readdirSync(root).filter((f) => !f.startsWith('case-')), [])
})

test.serial('a redirect to another host gets no HF_TOKEN, and its bytes are checked against the listing', async (t) => {
  const root = freshRoot(hub)
  const cdn = { auth: [], tamper: false }
  cdn.server = createServer((req, res) => {
    cdn.auth.push(req.headers.authorization)
    const f = req.url.slice('/blob/'.length)
    const body = Buffer.from(bytes[f])
    if (cdn.tamper) body[0] ^= 1
    res.writeHead(200, { 'content-length': body.length }).end(body)
  })
  await new Promise((r) => cdn.server.listen(0, '127.0.0.1', r))
  const cdnUrl = `http://127.0.0.1:${cdn.server.address().port}`
  try {
    cdn.tamper = true
    hub.state.redirect = (f) => (f === 'model.safetensors' ? `${cdnUrl}/blob/${f}` : undefined)
    await t.throwsAsync(resolveModel(REPO, { onProgress: false }), {
      code: 'DOWNLOAD_FAILED',
      message: /model\.safetensors: sha256 [0-9a-f]{64} does not match the hub's/,
    })
    t.false(listFiles(root).some((f) => f.includes('model.safetensors')))
    cdn.tamper = false
    const snap = await resolveModel(REPO, { onProgress: false })
    t.is(snap, join(root, 'cache', 'models--evil--model', 'snapshots', SHA))
    t.true(readFileSync(join(snap, 'model.safetensors')).equals(bytes['model.safetensors']))
    t.deepEqual(cdn.auth, [undefined, undefined], 'the token stays with the hub')
    t.true(hub.requests.some((u) => u.includes('/resolve/')), 'the hub itself was asked with the token (it answers 401 without)')
  } finally {
    cdn.server.close()
  }
  t.deepEqual(listFiles(root), ['cache/models--evil--model/refs/main', ...snapshotFiles()])
})

test.serial('a plain-http endpoint that is not loopback gets a one-line warning, once', async (t) => {
  freshRoot(hub)
  const written = []
  const write = process.stderr.write
  process.stderr.write = (chunk, ...rest) => (written.push(String(chunk)), write.call(process.stderr, chunk, ...rest))
  try {
    // A bad revision stops each call before the network, so no host needs to exist.
    const tryEndpoint = async (endpoint) => {
      process.env.HF_ENDPOINT = endpoint
      await t.throwsAsync(downloadFromHub(REPO, { revision: 'bad..rev', onProgress: false }), { message: /invalid revision/ })
    }
    await tryEndpoint('http://hub.mirror.internal:8080')
    await tryEndpoint('http://hub.mirror.internal:8080/')
    for (const quiet of ['https://hub.mirror.internal', 'http://localhost:9', 'http://127.0.0.2:9', 'http://[::1]:9']) await tryEndpoint(quiet)
    process.env.HF_ENDPOINT = 'ftp://hub.mirror.internal'
    await t.throwsAsync(downloadFromHub(REPO, { onProgress: false }), {
      code: 'DOWNLOAD_FAILED',
      message: 'invalid HF_ENDPOINT "ftp://hub.mirror.internal": expected an http(s) URL',
    })
    // The test hub on 127.0.0.1 is plain http too, and quiet.
    process.env.HF_ENDPOINT = hub.url
    await resolveModel(REPO, { onProgress: false })
  } finally {
    process.stderr.write = write
  }
  const warnings = written.filter((w) => w.includes('nano-qwen3-serving: warning'))
  t.deepEqual(warnings, [
    'nano-qwen3-serving: warning: HF_ENDPOINT http://hub.mirror.internal:8080 is plain http: model files can be altered in transit\n',
  ])
})

test.serial('downloadFromHub and findInCache check the repo id they are given', async (t) => {
  const root = freshRoot(hub)
  for (const repo of ['a/../../../../escaped', '../x', 'org/name/extra', '/abs/x', 'a\\b/c']) {
    await t.throwsAsync(downloadFromHub(repo, { onProgress: false }), {
      code: 'DOWNLOAD_FAILED',
      message: `invalid repo id ${JSON.stringify(repo)}: expected "org/name" with letters, digits, '_', '-' and '.'`,
    })
    t.throws(() => findInCache(repo), { code: 'DOWNLOAD_FAILED', message: /invalid repo id/ })
  }
  t.deepEqual(hub.requests, [])
  t.deepEqual(listFiles(root), [])
})

test.serial('a ref file in the cache that does not hold a sha is not followed', async (t) => {
  const root = freshRoot(hub)
  // A complete model outside the cache, and a ref pointing at it.
  mkdirSync(join(root, 'elsewhere'))
  for (const f of FILES) writeFileSync(join(root, 'elsewhere', f), bytes[f])
  mkdirSync(join(root, 'cache/models--evil--model/refs'), { recursive: true })
  writeFileSync(join(root, 'cache/models--evil--model/refs/main'), '../../../elsewhere')
  t.is(findInCache(REPO), undefined)
  await goodDownloadWorks(t, hub, root, {}, FILES.map((f) => `elsewhere/${f}`))
  t.is(readFileSync(join(root, 'cache/models--evil--model/refs/main'), 'utf8'), SHA)
})
