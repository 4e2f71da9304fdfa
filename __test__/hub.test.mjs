// Hugging Face ids: download from a hub on 127.0.0.1 (the hub's URL layout), into the standard cache
// layout, with HF_ENDPOINT and HF_TOKEN honoured; later loads come from the cache.
import test from 'ava'
import { createReadStream, existsSync, readFileSync, readdirSync, statSync } from 'node:fs'
import { createServer } from 'node:http'
import { join } from 'node:path'
import { findInCache, ModelRunner, resolveModel } from '../dist/index.mjs'
import { fixtureDir, reference } from './helpers.mjs'
import { scratchDir } from './scratch.mjs'

const SHA = '0123456789abcdef0123456789abcdef01234567'
const FILES = ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']

function startHub(token) {
  const requests = []
  const server = createServer((req, res) => {
    requests.push(req.url)
    if (req.headers.authorization !== `Bearer ${token}`) {
      res.writeHead(401).end('unauthorized')
      return
    }
    if (req.url.split('?')[0] === '/api/models/test-org/tiny-qwen3/revision/main') {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ id: 'test-org/tiny-qwen3', sha: SHA, siblings: [...FILES, 'README.md'].map((rfilename) => ({ rfilename })) }))
      return
    }
    const m = /^\/test-org\/tiny-qwen3\/resolve\/([^/]+)\/(.+)$/.exec(req.url)
    if (m && m[1] === SHA && FILES.includes(m[2])) {
      const path = join(fixtureDir, m[2])
      res.writeHead(200, { 'content-length': statSync(path).size, 'x-repo-commit': SHA })
      createReadStream(path).pipe(res)
      return
    }
    res.writeHead(404).end('not found')
  })
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve({ server, requests, url: `http://127.0.0.1:${server.address().port}` })),
  )
}

test.serial('downloads a model id into the HF cache, then loads it from there', async (t) => {
  const hub = await startHub('secret-token')
  const cache = scratchDir('hf-cache-')
  process.env.HF_HUB_CACHE = cache
  process.env.HF_ENDPOINT = hub.url
  process.env.HF_TOKEN = 'secret-token'
  const progress = []
  try {
    const runner = await ModelRunner.load({ modelName: 'test-org/tiny-qwen3', onDownloadProgress: (p) => progress.push(p) })
    const out = await runner.generate(reference.prompts[0].input_ids, { maxTokens: 24, temperature: 0, ignoreEos: true })
    t.deepEqual(out.tokenIds, reference.prompts[0].greedy_continuation)
    await runner.dispose()
  } finally {
    hub.server.close()
  }
  // The standard cache layout, so Python tools see the same files.
  const snap = join(cache, 'models--test-org--tiny-qwen3', 'snapshots', SHA)
  t.is(readFileSync(join(cache, 'models--test-org--tiny-qwen3', 'refs', 'main'), 'utf8'), SHA)
  t.deepEqual(readdirSync(snap).sort(), FILES)
  t.false(existsSync(join(snap, 'README.md')), 'only the files a model needs are fetched')
  const last = progress.filter((p) => p.file === 'model.safetensors').at(-1)
  t.is(last.downloadedBytes, statSync(join(fixtureDir, 'model.safetensors')).size)
  // Server gone: the cached copy is used.
  t.is(findInCache('test-org/tiny-qwen3'), snap)
  t.is(await resolveModel('test-org/tiny-qwen3'), snap)
})

test.serial('a missing token gives a clear error and leaves nothing half-written', async (t) => {
  const hub = await startHub('needed')
  const cache = scratchDir('hf-cache-')
  process.env.HF_HUB_CACHE = cache
  process.env.HF_ENDPOINT = hub.url
  delete process.env.HF_TOKEN
  try {
    const e = await t.throwsAsync(ModelRunner.load({ modelName: 'test-org/tiny-qwen3', onDownloadProgress: false }))
    t.is(e.code, 'DOWNLOAD_FAILED')
    t.regex(e.message, /HTTP 401 .*set HF_TOKEN/)
  } finally {
    hub.server.close()
  }
  t.is(findInCache('test-org/tiny-qwen3'), undefined)
})

test.serial('an unknown model id and an unreachable hub are clear errors', async (t) => {
  const hub = await startHub('x')
  process.env.HF_HUB_CACHE = scratchDir('hf-cache-')
  process.env.HF_ENDPOINT = hub.url
  process.env.HF_TOKEN = 'x'
  try {
    await t.throwsAsync(resolveModel('test-org/does-not-exist', { onProgress: false }), { message: /HTTP 404/ })
  } finally {
    hub.server.close()
  }
  process.env.HF_ENDPOINT = 'http://127.0.0.1:9'
  await t.throwsAsync(resolveModel('test-org/other', { onProgress: false }), { code: 'DOWNLOAD_FAILED', message: /cannot reach/ })
  process.env.HF_HUB_OFFLINE = '1'
  await t.throwsAsync(resolveModel('test-org/other'), { code: 'MODEL_NOT_FOUND', message: /HF_HUB_OFFLINE=1/ })
  delete process.env.HF_HUB_OFFLINE
})
