// The device the server suites run on (apart from helpers.mjs so that files which only need paths
// and readers do not load the native addon).
import { ModelRunner } from '../dist/index.mjs'
import { fixtureDir } from './helpers.mjs'

/**
 * The device the server suites load their runner on: NANO_QWEN3_TEST_DEVICE (CI runs those suites a
 * second time with 'gpu', on lavapipe), else the default ('auto'). A runner that did not land on the
 * device asked for fails the suite instead of quietly testing the CPU twice.
 */
export const testDevice = process.env.NANO_QWEN3_TEST_DEVICE || 'auto'

export async function loadTestRunner(opts = {}) {
  const runner = await ModelRunner.load({ modelName: fixtureDir, threads: 2, device: testDevice, onLoadProgress: false, ...opts })
  const ran = runner.getAccelerationInfo().device
  if (testDevice !== 'auto' && ran !== testDevice.replace(/:.*/, '')) {
    await runner.dispose()
    throw new Error(`NANO_QWEN3_TEST_DEVICE=${testDevice} but the runner loaded on ${ran}`)
  }
  return runner
}
