/**
 * Model names -> local folders. A path is used as is; a Hugging Face id ("Qwen/Qwen3-0.6B") is found
 * in the standard HF cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub) or
 * downloaded into it from HF_ENDPOINT (default https://huggingface.co) with HF_TOKEN, in the
 * cache's own layout so that Python tools find the same files.
 */
import { createHash } from 'node:crypto'
import { createWriteStream, existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { dirname, join, resolve, sep } from 'node:path'
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
const COMMIT = /^[0-9a-f]{40}$/

export function hubCacheDir(): string {
  if (process.env.HF_HUB_CACHE) return process.env.HF_HUB_CACHE
  const home = process.env.HF_HOME ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'huggingface')
  return join(home, 'hub')
}

// Every value below becomes part of a path in the cache, and comes from the caller or the hub's answer
// (a mirror may be compromised or spoofed): each is checked before use, and the final path must still
// lie inside the repo's cache folder. Refusals are DOWNLOAD_FAILED naming the value and what is allowed.

function refuse(message: string): never {
  throw new NanoQwenError('DOWNLOAD_FAILED', message)
}

/** The repo id names the cache folder: only "org/name" with the characters the hub allows. */
function checkRepo(repo: string): void {
  if (typeof repo !== 'string' || !HF_ID.test(repo)) {
    refuse(`invalid repo id ${JSON.stringify(repo)}: expected "org/name" with letters, digits, '_', '-' and '.'`)
  }
}

/** Why a revision is not a branch or tag name by git's rules (git check-ref-format), or undefined. */
function refNameProblem(rev: string): string | undefined {
  if (rev.length === 0) return 'empty'
  if (/[\x00-\x20\x7f~^:?*[\\]/.test(rev)) return 'a space, control character or one of ~ ^ : ? * [ \\'
  if (rev.includes('..')) return "'..'"
  if (rev.includes('@{') || rev === '@') return "'@{' or a lone '@'"
  if (rev.startsWith('/') || rev.endsWith('/') || rev.includes('//')) return "a leading, trailing or doubled '/'"
  if (rev.endsWith('.')) return "a trailing '.'"
  if (rev.split('/').some((part) => part.startsWith('.') || part.endsWith('.lock'))) return "a part starting with '.' or ending in '.lock'"
  return undefined
}

/** The revision names a file under refs/ (read, and written with the commit): a ref name or a commit sha. */
function checkRevision(rev: string): void {
  if (typeof rev === 'string' && COMMIT.test(rev)) return
  const problem = typeof rev === 'string' ? refNameProblem(rev) : 'not a string'
  if (problem) {
    refuse(`invalid revision ${JSON.stringify(rev)} (${problem}): expected a branch or tag name by git's rules, or a 40-hex commit sha`)
  }
}

/** The hub's commit names the snapshot folder: only a full lowercase hex sha, nothing path-like. */
function checkCommit(sha: unknown, from: string): string {
  if (typeof sha !== 'string' || !COMMIT.test(sha)) {
    refuse(`${from}: invalid commit sha ${JSON.stringify(sha)}: expected 40 lowercase hex characters`)
  }
  return sha
}

/** Why a file name from the hub could leave its snapshot folder (or mean something else on Windows), or undefined. */
function fileNameProblem(name: string): string | undefined {
  if (name.length === 0) return 'empty'
  if (name.includes('\\')) return "a '\\' (a separator on Windows)"
  if (/[\x00-\x1f\x7f]/.test(name)) return 'a control character'
  if (name.startsWith('/')) return 'an absolute path'
  if (/^[A-Za-z]:/.test(name)) return 'a drive letter'
  if (name.split('/').some((part) => part === '' || part === '.' || part === '..')) return "an empty, '.' or '..' part"
  return undefined
}

/** A listing with a path-like name comes from a hostile or broken hub: refuse it whole rather than guess which files are safe. */
function checkFileName(name: unknown, from: string): string {
  const problem = typeof name === 'string' ? fileNameProblem(name) : 'not a string'
  if (problem) {
    const allowed = "expected a relative path with '/' between folders, no '..', no '\\', no drive letter"
    refuse(`${from}: invalid file name ${JSON.stringify(name)} (${problem}): ${allowed}`)
  }
  return name as string
}

/** Last line of defence: `path`, resolved, lies strictly inside `dir`. */
function inside(dir: string, path: string): string {
  const root = resolve(dir)
  const full = resolve(path)
  if (!full.startsWith(root + sep)) refuse(`refusing to use ${full}: outside the cache folder ${root}`)
  return full
}

/** Plain http to another host lets anyone on the way swap the files (the checks below only catch corruption). */
const warnedEndpoints = new Set<string>()
function checkEndpoint(endpoint: string): void {
  let url: URL
  try {
    url = new URL(endpoint)
  } catch {
    refuse(`invalid HF_ENDPOINT ${JSON.stringify(endpoint)}: expected an http(s) URL`)
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') refuse(`invalid HF_ENDPOINT ${JSON.stringify(endpoint)}: expected an http(s) URL`)
  const loopback = url.hostname === 'localhost' || url.hostname === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(url.hostname)
  if (url.protocol === 'http:' && !loopback && !warnedEndpoints.has(endpoint)) {
    warnedEndpoints.add(endpoint)
    process.stderr.write(`nano-qwen3-serving: warning: HF_ENDPOINT ${endpoint} is plain http: model files can be altered in transit\n`)
  }
}

function repoCacheDir(repo: string): string {
  checkRepo(repo)
  const cache = hubCacheDir()
  return inside(cache, join(cache, `models--${repo.replace('/', '--')}`))
}

function isComplete(dir: string): boolean {
  if (!existsSync(join(dir, 'config.json')) || !existsSync(join(dir, 'tokenizer.json'))) return false
  const index = join(dir, 'model.safetensors.index.json')
  if (existsSync(index)) {
    const shards = new Set(Object.values(JSON.parse(readFileSync(index, 'utf8')).weight_map ?? {}) as string[])
    return [...shards].every((s) => fileNameProblem(s) === undefined && existsSync(join(dir, s)))
  }
  return existsSync(join(dir, 'model.safetensors'))
}

/** The snapshot folder of `repo` in the cache, if complete. */
export function findInCache(repo: string, revision = 'main'): string | undefined {
  checkRevision(revision)
  const base = repoCacheDir(repo)
  const ref = inside(base, join(base, 'refs', revision))
  const commit = existsSync(ref) ? readFileSync(ref, 'utf8').trim() : revision
  // A ref file that does not hold a sha (or a branch never fetched) is not a snapshot: download again.
  if (!COMMIT.test(commit)) return undefined
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
    // fetch drops the authorization header on a redirect to another origin: the token stays with the hub.
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

/** A file as the hub lists it with ?blobs=true: size for every file, sha256 for LFS ones. */
interface Sibling {
  rfilename: string
  size?: number
  lfs?: { sha256?: string; size?: number }
}

/** Download `repo` at `revision` into the HF cache; returns the snapshot folder. */
export async function downloadFromHub(repo: string, opts: ResolveOptions = {}): Promise<string> {
  const endpoint = (process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '')
  checkEndpoint(endpoint)
  const revision = opts.revision ?? 'main'
  checkRevision(revision)
  const base = repoCacheDir(repo)
  const infoUrl = `${endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}?blobs=true`
  const from = `hub answer from ${endpoint} for ${repo}`
  const info = (await (await hubFetch(infoUrl, `model ${repo}`)).json().catch(() => null)) as { sha?: unknown; siblings?: Sibling[] } | null
  if (!info?.sha || !Array.isArray(info.siblings)) refuse(`unexpected answer from ${endpoint} for ${repo}: no sha/siblings`)
  const sha = checkCommit(info.sha, from)
  const siblings = info.siblings.filter((s) => WANTED.test(checkFileName(s?.rfilename, from)))
  const files = siblings.map((s) => s.rfilename)
  if (!files.includes('config.json') || !files.some((f) => f.endsWith('.safetensors'))) {
    throw new NanoQwenError('MODEL_NOT_FOUND', `${repo} has no config.json and safetensors weights (files: ${files.join(', ')})`)
  }
  const snap = inside(base, join(base, 'snapshots', sha))
  const report = opts.onProgress === false ? () => {} : (opts.onProgress ?? stderrBar())
  for (const { rfilename: file, size, lfs } of siblings) {
    const dest = inside(snap, join(snap, file))
    if (existsSync(dest)) continue
    mkdirSync(dirname(dest), { recursive: true })
    const res = await hubFetch(`${endpoint}/${repo}/resolve/${sha}/${file.split('/').map(encodeURIComponent).join('/')}`, file)
    const total = Number(res.headers.get('content-length')) || undefined
    // What the hub's listing promises, checked against the bytes (which may come from a redirect's host).
    const wantSize = typeof lfs?.size === 'number' ? lfs.size : typeof size === 'number' ? size : undefined
    const wantSha256 = typeof lfs?.sha256 === 'string' ? lfs.sha256.toLowerCase() : undefined
    const hash = wantSha256 !== undefined ? createHash('sha256') : undefined
    // Download next to the destination, rename when complete and checked: nothing half-written or wrong is ever used.
    const partial = `${dest}.incomplete`
    let downloaded = 0
    const counter = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        downloaded += chunk.length
        // Stop as soon as a file outgrows what the hub listed, rather than fill the disk.
        if (wantSize !== undefined && downloaded > wantSize) return cb(sizeMismatch(file, `more than ${wantSize}`, wantSize))
        hash?.update(chunk)
        report({ file, downloadedBytes: downloaded, totalBytes: total ?? wantSize })
        cb(null, chunk)
      },
    })
    try {
      await pipeline(Readable.fromWeb(res.body as any), counter, createWriteStream(partial))
      const got = statSync(partial).size
      if (total !== undefined && got !== total) refuse(`${file}: got ${got} of ${total} bytes`)
      if (wantSize !== undefined && got !== wantSize) throw sizeMismatch(file, got, wantSize)
      const gotSha256 = hash?.digest('hex')
      if (gotSha256 !== wantSha256) refuse(`${file}: sha256 ${gotSha256} does not match the hub's ${wantSha256}`)
      renameSync(partial, dest)
    } catch (e) {
      rmSync(partial, { force: true })
      throw e instanceof NanoQwenError ? e : new NanoQwenError('DOWNLOAD_FAILED', `${file}: ${(e as Error).message}`, { cause: e })
    }
    report({ file, downloadedBytes: downloaded, totalBytes: downloaded })
  }
  if (revision !== sha) {
    const ref = inside(base, join(base, 'refs', revision))
    mkdirSync(dirname(ref), { recursive: true })
    writeFileSync(ref, sha)
  }
  return snap
}

function sizeMismatch(file: string, got: number | string, want: number): NanoQwenError {
  return new NanoQwenError('DOWNLOAD_FAILED', `${file}: got ${got} bytes, the hub lists ${want}`)
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
