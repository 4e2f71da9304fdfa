// The device option end to end: 'gpu' runs the model on any adapter (lavapipe here and in CI, with
// WGPU_BACKEND=vulkan) and the plan names it; 'auto' never takes a software adapter. Without an
// adapter the GPU tests skip and say so, unless NANO_QWEN3_REQUIRE_GPU=1 (CI), where they fail.
import test from 'ava'
import { ModelAccelerator, ModelRunner } from '../dist/index.mjs'
import { fixtureDir, reference } from './helpers.mjs'

const requireGpu = process.env.NANO_QWEN3_REQUIRE_GPU === '1'

/** The runner on the GPU, or null (the test skips) when this machine has no adapter. */
async function onGpu(t, opts = {}) {
  try {
    return await ModelRunner.load({ modelName: fixtureDir, device: 'gpu', threads: 2, onLoadProgress: false, ...opts })
  } catch (e) {
    if (!requireGpu && /no GPU adapter/.test(e.message)) {
      t.log(`SKIPPED: no GPU adapter (install mesa-vulkan-drivers for lavapipe): ${e.message}`)
      return null
    }
    throw e
  }
}

test('device gpu: the plan names the adapter, and greedy tokens and logits match the CPU', async (t) => {
  const accelerationConfig = { quantization: 'fp32' }
  const gpu = await onGpu(t, { accelerationConfig })
  if (!gpu) return t.pass()
  const cpu = await ModelRunner.load({ modelName: fixtureDir, device: 'cpu', threads: 2, onLoadProgress: false, accelerationConfig })
  try {
    const plan = gpu.getAccelerationInfo()
    t.is(plan.device, 'gpu')
    t.truthy(plan.gpu.adapter && plan.gpu.backend && plan.gpu.driver)
    t.true(plan.deviceDetail.includes(plan.gpu.adapter))
    t.true(Array.isArray(plan.gpu.featuresUsed) && plan.gpu.onGpu.length > 0 && plan.gpu.onCpu.length > 0)
    t.is(plan.items.find((i) => i.option === 'useChannelsLast').applied, false)
    t.is(cpu.getAccelerationInfo().device, 'cpu')
    t.is(cpu.getAccelerationInfo().gpu, undefined)
    const params = { maxTokens: 12, temperature: 0, ignoreEos: true }
    for (const p of reference.prompts.slice(0, 2)) {
      const [g, c] = [await gpu.generate(p.input_ids, params), await cpu.generate(p.input_ids, params)]
      t.deepEqual(g.tokenIds, c.tokenIds)
      const [lg, lc] = [await gpu.computeLogits(p.input_ids), await cpu.computeLogits(p.input_ids)]
      let num = 0
      let den = 0
      for (let i = 0; i < lc.length; i++) {
        num += (lg[i] - lc[i]) ** 2
        den += lc[i] ** 2
      }
      t.true(Math.sqrt(num / den) < 1e-4, `relative L2 ${Math.sqrt(num / den)}`)
    }
  } finally {
    await gpu.dispose()
    await cpu.dispose()
  }
})

test('device auto never takes a software adapter; the plan says why it took the CPU', async (t) => {
  const runner = await ModelRunner.load({ modelName: fixtureDir, device: 'auto', threads: 2, onLoadProgress: false })
  try {
    const plan = runner.getAccelerationInfo()
    if (plan.device === 'gpu') {
      t.false(plan.gpu.software, `auto took a software adapter: ${plan.deviceDetail}`)
    } else {
      t.regex(plan.deviceDetail, /^device "auto": the CPU \(.+\)$/)
    }
  } finally {
    await runner.dispose()
  }
  const accel = new ModelAccelerator({}, 'cpu').plan()
  t.is(accel.deviceDetail, 'device "cpu": the CPU')
})

test('gpu:N past the adapters found is an error naming them', async (t) => {
  const e = await t.throwsAsync(ModelRunner.load({ modelName: fixtureDir, device: 'gpu:99', onLoadProgress: false }))
  t.is(e.code, 'UNSUPPORTED')
  t.regex(e.message, /gpu:99 does not exist: \d+ adapter\(s\) found|no GPU adapter/)
})
