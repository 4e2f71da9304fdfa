// The fixture re-shaped into the other layouts found in the wild gives the same logits.
import test from 'ava'
import { rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { ModelRunner } from '../dist/index.mjs'
import { editJson, fixtureCopy, readSafetensors, reference, referenceLogits, relL2, writeSafetensors } from './helpers.mjs'

async function assertSameLogits(t, dir) {
  const runner = await ModelRunner.load({ modelName: dir, threads: 2 })
  try {
    for (const [i, p] of reference.prompts.entries()) {
      const err = relL2(await runner.computeLogits(p.input_ids), referenceLogits(`last_logits.${i}`))
      t.true(err < 1e-4, `prompt ${i}: relative L2 ${err}`)
    }
  } finally {
    await runner.dispose()
  }
}

test('sharded checkpoint with model.safetensors.index.json', async (t) => {
  const dir = fixtureCopy()
  const tensors = readSafetensors(join(dir, 'model.safetensors'))
  rmSync(join(dir, 'model.safetensors'))
  const names = Object.keys(tensors)
  const shards = [names.slice(0, names.length / 2), names.slice(names.length / 2)]
  const weightMap = {}
  shards.forEach((part, k) => {
    const file = `model-0000${k + 1}-of-00002.safetensors`
    writeSafetensors(join(dir, file), Object.fromEntries(part.map((n) => [n, tensors[n]])))
    for (const n of part) weightMap[n] = file
  })
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }))
  await assertSameLogits(t, dir)
})

test('untied lm_head.weight', async (t) => {
  const dir = fixtureCopy()
  const tensors = readSafetensors(join(dir, 'model.safetensors'))
  tensors['lm_head.weight'] = tensors['model.embed_tokens.weight']
  writeSafetensors(join(dir, 'model.safetensors'), tensors)
  editJson(join(dir, 'config.json'), (c) => ({ ...c, tie_word_embeddings: false }))
  await assertSameLogits(t, dir)
  // And the untied head is really used: zero it and the logits change.
  tensors['lm_head.weight'] = { ...tensors['lm_head.weight'], data: Buffer.alloc(tensors['lm_head.weight'].data.length) }
  writeSafetensors(join(dir, 'model.safetensors'), tensors)
  const runner = await ModelRunner.load({ modelName: dir })
  t.true((await runner.computeLogits('Hello')).every((x) => x === 0))
  await runner.dispose()
})

test('transformers-5 config with rope_parameters', async (t) => {
  const dir = fixtureCopy()
  editJson(join(dir, 'config.json'), (c) => {
    const { rope_theta, rope_scaling, ...rest } = c
    return { ...rest, rope_parameters: { rope_theta, rope_type: 'default' }, dtype: 'bfloat16' }
  })
  await assertSameLogits(t, dir)
})

test('an f32 checkpoint loads too', async (t) => {
  const tensors = readSafetensors(join(fixtureCopy(), 'model.safetensors'))
  const dir = fixtureCopy()
  // bf16 -> f32 is exact: shift each bf16 into the high half of an f32.
  const f32 = Object.fromEntries(
    Object.entries(tensors).map(([n, v]) => {
      const out = Buffer.alloc(v.data.length * 2)
      for (let i = 0; i < v.data.length / 2; i++) out.writeUInt16LE(v.data.readUInt16LE(2 * i), 4 * i + 2)
      return [n, { dtype: 'F32', shape: v.shape, data: out }]
    }),
  )
  writeSafetensors(join(dir, 'model.safetensors'), f32)
  await assertSameLogits(t, dir)
  // 'none' keeps f32 weights; 'bf16' stores them in half the bytes.
  const none = await ModelRunner.load({ modelName: dir })
  const bf16 = await ModelRunner.load({ modelName: dir, accelerationConfig: { quantization: 'bf16' } })
  t.is(none.getModelInfo().dtype, 'f32')
  t.is(bf16.getModelInfo().dtype, 'bf16')
  t.true(bf16.estimateMemoryUsage().weightBytes < 0.51 * none.estimateMemoryUsage().weightBytes)
  await Promise.all([none.dispose(), bf16.dispose()])
})
