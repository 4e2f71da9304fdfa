// Shared test helpers: the fixture, its HF reference outputs, and a minimal safetensors reader/writer
// used to re-shape the fixture into other checkpoint layouts.
import { cpSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { scratchDir } from './scratch.mjs'

export const root = join(dirname(fileURLToPath(import.meta.url)), '..')
export const fixtureDir = join(root, 'fixtures', 'qwen3-tiny')
export const reference = JSON.parse(readFileSync(join(fixtureDir, 'reference.json'), 'utf8'))

/** { name: { dtype, shape, data: Buffer } } */
export function readSafetensors(path) {
  const buf = readFileSync(path)
  const n = Number(buf.readBigUInt64LE(0))
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'))
  const out = {}
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue
    const [a, b] = t.data_offsets
    out[name] = { dtype: t.dtype, shape: t.shape, data: Buffer.from(buf.subarray(8 + n + a, 8 + n + b)) }
  }
  return out
}

export function writeSafetensors(path, tensors) {
  const header = {}
  let offset = 0
  const names = Object.keys(tensors)
  for (const name of names) {
    const t = tensors[name]
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.length] }
    offset += t.data.length
  }
  let json = Buffer.from(JSON.stringify(header))
  const pad = (8 - (json.length % 8)) % 8
  json = Buffer.concat([json, Buffer.alloc(pad, 0x20)])
  const len = Buffer.alloc(8)
  len.writeBigUInt64LE(BigInt(json.length))
  writeFileSync(path, Buffer.concat([len, json, ...names.map((n) => tensors[n].data)]))
}

export function referenceLogits(name) {
  const t = readSafetensors(join(fixtureDir, 'reference.safetensors'))[name]
  return new Float32Array(t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + t.data.length))
}

export function relL2(got, want) {
  if (got.length !== want.length) throw new Error(`length ${got.length} != ${want.length}`)
  let num = 0
  let den = 0
  for (let i = 0; i < got.length; i++) {
    if (!Number.isFinite(got[i])) return Infinity // NaN never passes
    num += (got[i] - want[i]) ** 2
    den += want[i] ** 2
  }
  return Math.sqrt(num / den)
}

export function topK(row, k) {
  return [...row.keys()].sort((a, b) => row[b] - row[a]).slice(0, k)
}

/** A writable copy of the fixture (without the reference files). */
export function fixtureCopy() {
  const dir = scratchDir('nq3-')
  for (const f of ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']) {
    cpSync(join(fixtureDir, f), join(dir, f))
  }
  return dir
}

export function editJson(path, edit) {
  const v = JSON.parse(readFileSync(path, 'utf8'))
  writeFileSync(path, JSON.stringify(edit(v) ?? v, null, 2))
}

/** Log-softmax of a row of logits (numbers), as a plain array. */
export function logSoftmax(row) {
  let m = -Infinity
  for (const v of row) m = Math.max(m, v)
  let s = 0
  for (const v of row) s += Math.exp(v - m)
  const lse = m + Math.log(s)
  return Array.from(row, (v) => v - lse)
}

