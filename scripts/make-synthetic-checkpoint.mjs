#!/usr/bin/env node
// Writes a checkpoint with exactly Qwen3-0.6B's shapes and random seeded bf16 weights, in Hugging Face
// layout (config.json, model.safetensors, tokenizer files from the fixture). Speed depends on shapes,
// not values, so benchmarks use this instead of the real (unreachable here) weights.
//   node scripts/make-synthetic-checkpoint.mjs [outDir]
import { closeSync, copyFileSync, existsSync, mkdirSync, openSync, renameSync, writeFileSync, writeSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
export const defaultSyntheticDir = join(root, '.bench-models', 'qwen3-0.6b-synthetic')

export const QWEN3_0_6B = {
  architectures: ['Qwen3ForCausalLM'],
  model_type: 'qwen3',
  vocab_size: 151936,
  hidden_size: 1024,
  intermediate_size: 3072,
  num_hidden_layers: 28,
  num_attention_heads: 16,
  num_key_value_heads: 8,
  head_dim: 128,
  max_position_embeddings: 40960,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000,
  tie_word_embeddings: true,
  bos_token_id: 151643,
  eos_token_id: 151645,
  torch_dtype: 'bfloat16',
}

function tensorList(c) {
  const { hidden_size: h, intermediate_size: i, head_dim: d } = c
  const q = c.num_attention_heads * d
  const kv = c.num_key_value_heads * d
  const list = [['model.embed_tokens.weight', [c.vocab_size, h], 'random']]
  for (let l = 0; l < c.num_hidden_layers; l++) {
    const p = `model.layers.${l}`
    list.push(
      [`${p}.input_layernorm.weight`, [h], 'one'],
      [`${p}.self_attn.q_proj.weight`, [q, h], 'random'],
      [`${p}.self_attn.k_proj.weight`, [kv, h], 'random'],
      [`${p}.self_attn.v_proj.weight`, [kv, h], 'random'],
      [`${p}.self_attn.o_proj.weight`, [h, q], 'random'],
      [`${p}.self_attn.q_norm.weight`, [d], 'one'],
      [`${p}.self_attn.k_norm.weight`, [d], 'one'],
      [`${p}.post_attention_layernorm.weight`, [h], 'one'],
      [`${p}.mlp.gate_proj.weight`, [i, h], 'random'],
      [`${p}.mlp.up_proj.weight`, [i, h], 'random'],
      [`${p}.mlp.down_proj.weight`, [h, i], 'random'],
    )
  }
  list.push(['model.norm.weight', [h], 'one'])
  return list
}

export function makeSyntheticCheckpoint(outDir = defaultSyntheticDir, { seed = 1234, config = QWEN3_0_6B, log = console.error } = {}) {
  if (existsSync(join(outDir, 'model.safetensors'))) return outDir
  mkdirSync(outDir, { recursive: true })
  const tensors = tensorList(config)
  const header = {}
  let offset = 0
  for (const [name, shape] of tensors) {
    const bytes = shape.reduce((a, b) => a * b, 1) * 2
    header[name] = { dtype: 'BF16', shape, data_offsets: [offset, offset + bytes] }
    offset += bytes
  }
  let json = Buffer.from(JSON.stringify(header))
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)])
  const partial = join(outDir, 'model.safetensors.incomplete')
  const fd = openSync(partial, 'w')
  const len = Buffer.alloc(8)
  len.writeBigUInt64LE(BigInt(json.length))
  writeSync(fd, len)
  writeSync(fd, json)
  // xorshift32 -> uniform in [-0.04, 0.04] (std ~0.023, like trained projections), stored as bf16.
  let s = seed >>> 0 || 1
  const f32 = new Float32Array(1)
  const u32 = new Uint32Array(f32.buffer)
  const chunk = new Uint16Array(1 << 20)
  let written = 0
  const started = Date.now()
  for (const [name, shape, kind] of tensors) {
    let n = shape.reduce((a, b) => a * b, 1)
    while (n > 0) {
      const m = Math.min(n, chunk.length)
      for (let k = 0; k < m; k++) {
        if (kind === 'one') {
          chunk[k] = 0x3f80
          continue
        }
        s ^= s << 13
        s ^= s >>> 17
        s ^= s << 5
        f32[0] = ((s >>> 0) / 4294967296 - 0.5) * 0.08
        chunk[k] = u32[0] >>> 16
      }
      writeSync(fd, Buffer.from(chunk.buffer, 0, m * 2))
      n -= m
      written += m * 2
    }
    if (name.endsWith('down_proj.weight') || name === 'model.norm.weight') {
      const pct = ((100 * written) / offset).toFixed(0).padStart(3)
      log(`synthetic Qwen3-0.6B: [${'#'.repeat(Math.round(pct / 4)).padEnd(25, '-')}] ${pct}% (${name})`)
    }
  }
  closeSync(fd)
  renameSync(partial, join(outDir, 'model.safetensors'))
  writeFileSync(join(outDir, 'config.json'), JSON.stringify(config, null, 2))
  writeFileSync(join(outDir, 'generation_config.json'), JSON.stringify({ eos_token_id: [151645, 151643], do_sample: false }))
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(root, 'fixtures', 'qwen3-tiny', f), join(outDir, f))
  log(`synthetic Qwen3-0.6B written to ${outDir} in ${((Date.now() - started) / 1000).toFixed(1)} s`)
  return outDir
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  makeSyntheticCheckpoint(process.argv[2] ?? defaultSyntheticDir)
}
