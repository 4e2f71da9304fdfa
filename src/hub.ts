/**
 * Model names -> local folders. A path is used as is; a Hugging Face id ("Qwen/Qwen3-0.6B") is found
 * in the standard HF cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub) or
 * downloaded into it from HF_ENDPOINT (default https://huggingface.co) with HF_TOKEN, in the
 * cache's own layout so that Python tools find the same files.
 */
import { createWriteStream, existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { Readable, Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { NanoQwenError } from './errors.js'
import { progressBar } from './progress.js'

export interface DownloadProgress {
  file: string
  downloadedBytes: number
  totalBytes: number | undefined
}

export interface ResolveOptions {
  revision?: string
  /** Called as bytes arrive. Default: a progress bar on stderr. `false` silences it. */
  onProgress?: ((p: DownloadProgress) => void) | false
}

const HF_ID = /^[A-Za-z0-9][\w.-]*\/[\w.-]+$/
const WANTED = /^(config\.json|generation_config\.json|tokenizer\.json|tokenizer_config\.json|model\.safetensors\.index\.json|[^/]*\.safetensors)$/

export function hubCacheDir(): string {
  if (process.env.HF_HUB_CACHE) return process.env.HF_HUB_CACHE
  const home = process.env.HF_HOME ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'huggingface')
  return join(home, 'hub')
}

function repoCacheDir(repo: string): string {
  return join(hubCacheDir(), `models--${repo.replace('/', '--')}`)
}

function isComplete(dir: string): boolean {
  if (!existsSync(join(dir, 'config.json')) || !existsSync(join(dir, 'tokenizer.json'))) return false
  const index = join(dir, 'model.safetensors.index.json')
  if (existsSync(index)) {
    const shards = new Set(Object.values(JSON.parse(readFileSync(index, 'utf8')).weight_map ?? {}) as string[])
    return [...shards].every((s) => existsSync(join(dir, s)))
  }
  return existsSync(join(dir, 'model.safetensors'))
}

/** The snapshot folder of `repo` in the cache, if complete. */
export function findInCache(repo: string, revision = 'main'): string | undefined {
  const base = repoCacheDir(repo)
  const ref = join(base, 'refs', revision)
  const commit = existsSync(ref) ? readFileSync(ref, 'utf8').trim() : revision
  const snap = join(base, 'snapshots', commit)
  return existsSync(snap) && isComplete(snap) ? snap : undefined
}

function stderrBar(): (p: DownloadProgress) => void {
  const draw = progressBar(true)
  return (p) => {
    const mb = (n: number) => (n / 1048576).toFixed(1)
    const total = p.totalBytes ?? 0
    const done = p.totalBytes !== undefined && p.downloadedBytes >= p.totalBytes
    draw(p.file, total ? p.downloadedBytes / total : 0, `${mb(p.downloadedBytes)}${total ? `/${mb(total)}` : ''} MB`, done)
  }
}

async function hubFetch(url: string, what: string): Promise<Response> {
  const headers: Record<string, string> = { 'user-agent': 'nano-qwen3-serving' }
  if (process.env.HF_TOKEN) headers.authorization = `Bearer ${process.env.HF_TOKEN}`
  let res: Response
  try {
    res = await fetch(url, { headers, redirect: 'follow' })
  } catch (e) {
    throw new NanoQwenError('DOWNLOAD_FAILED', `cannot reach ${url} for ${what}: ${(e as Error).message}`, { cause: e })
  }
  if (!res.ok) {
    const hint = res.status === 401 || res.status === 403 ? ' (gated or private model: set HF_TOKEN)' : ''
    throw new NanoQwenError('DOWNLOAD_FAILED', `${what}: HTTP ${res.status} from ${url}${hint}`)
  }
  return res
}

/** Download `repo` at `revision` into the HF cache; returns the snapshot folder. */
export async function downloadFromHub(repo: string, opts: ResolveOptions = {}): Promise<string> {
  const endpoint = (process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '')
  const revision = opts.revision ?? 'main'
  const info = (await (await hubFetch(`${endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}`, `model ${repo}`)).json()) as {
    sha?: string
    siblings?: { rfilename: string }[]
  }
  const sha = info.sha
  if (!sha || !Array.isArray(info.siblings)) {
    throw new NanoQwenError('DOWNLOAD_FAILED', `unexpected answer from ${endpoint} for ${repo}: no sha/siblings`)
  }
  const files = info.siblings.map((s) => s.rfilename).filter((f) => WANTED.test(f))
  if (!files.includes('config.json') || !files.some((f) => f.endsWith('.safetensors'))) {
    throw new NanoQwenError('MODEL_NOT_FOUND', `${repo} has no config.json and safetensors weights (files: ${files.join(', ')})`)
  }
  const base = repoCacheDir(repo)
  const snap = join(base, 'snapshots', sha)
  const report = opts.onProgress === false ? () => {} : (opts.onProgress ?? stderrBar())
  for (const file of files) {
    const dest = join(snap, file)
    if (existsSync(dest)) continue
    mkdirSync(dirname(dest), { recursive: true })
    const res = await hubFetch(`${endpoint}/${repo}/resolve/${sha}/${file}`, file)
    const total = Number(res.headers.get('content-length')) || undefined
    // Download next to the destination, rename when complete: nothing half-written is ever used.
    const partial = `${dest}.incomplete`
    let downloaded = 0
    const counter = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        downloaded += chunk.length
        report({ file, downloadedBytes: downloaded, totalBytes: total })
        cb(null, chunk)
      },
    })
    try {
      await pipeline(Readable.fromWeb(res.body as any), counter, createWriteStream(partial))
      if (total !== undefined && statSync(partial).size !== total) {
        throw new NanoQwenError('DOWNLOAD_FAILED', `${file}: got ${statSync(partial).size} of ${total} bytes`)
      }
      renameSync(partial, dest)
    } catch (e) {
      rmSync(partial, { force: true })
      throw e instanceof NanoQwenError ? e : new NanoQwenError('DOWNLOAD_FAILED', `${file}: ${(e as Error).message}`, { cause: e })
    }
    report({ file, downloadedBytes: downloaded, totalBytes: downloaded })
  }
  mkdirSync(join(base, 'refs'), { recursive: true })
  if (revision !== sha) writeFileSync(join(base, 'refs', revision), sha)
  return snap
}

/** A local folder for `modelName`: an existing path, a cached HF id, or a fresh download. */
export async function resolveModel(modelName: string, opts: ResolveOptions = {}): Promise<string> {
  if (typeof modelName !== 'string' || modelName.length === 0) {
    throw new NanoQwenError('INVALID_ARGUMENT', `invalid modelName = ${JSON.stringify(modelName)}: a folder path or a Hugging Face id like "Qwen/Qwen3-0.6B"`)
  }
  const local = resolve(modelName)
  if (existsSync(local)) return local
  if (modelName.startsWith('.') || modelName.startsWith('/') || !HF_ID.test(modelName)) {
    throw new NanoQwenError('MODEL_NOT_FOUND', `model folder ${local} does not exist (and "${modelName}" is not a Hugging Face id)`)
  }
  const cached = findInCache(modelName, opts.revision)
  if (cached) return cached
  if (process.env.HF_HUB_OFFLINE === '1') {
    throw new NanoQwenError('MODEL_NOT_FOUND', `${modelName} is not in the HF cache (${hubCacheDir()}) and HF_HUB_OFFLINE=1`)
  }
  return downloadFromHub(modelName, opts)
}
