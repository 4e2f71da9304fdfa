// One engine configuration, measured in its own process (so peak RSS is its own):
//   node bench/engine-bench.mjs --model DIR --quantization none --threads 2
// Prints one JSON line: load time, prefill tokens/s (512-token prompt), decode tokens/s (128 tokens
// after a 32-token prompt, EOS ignored, greedy), peak RSS.
import { parseArgs } from 'node:util'
import { Bench } from 'tinybench'
import { ModelRunner } from '../dist/index.mjs'

const { values: o } = parseArgs({
  options: {
    model: { type: 'string' },
    quantization: { type: 'string', default: 'none' },
    // cpu by default, so the CPU rows stay CPU rows on a machine with a GPU.
    device: { type: 'string', default: 'cpu' },
    threads: { type: 'string', default: '2' },
    'prefill-tokens': { type: 'string', default: '512' },
    'decode-tokens': { type: 'string', default: '128' },
    iterations: { type: 'string', default: '2' },
    // Extra acceleration options as JSON, e.g. '{"useFlashAttention":false}' (ablations).
    accel: { type: 'string', default: '{}' },
  },
})
const prefillTokens = Number(o['prefill-tokens'])
const decodeTokens = Number(o['decode-tokens'])
// Fixed, varied token ids: speed depends on the count, not the values.
const ids = (n) => Array.from({ length: n }, (_, i) => 1000 + ((i * 7919) % 100000))

const t0 = performance.now()
const runner = await ModelRunner.load({
  modelName: o.model,
  device: o.device,
  threads: Number(o.threads),
  accelerationConfig: { quantization: o.quantization, ...JSON.parse(o.accel) },
  onLoadProgress: false,
})
const loadMs = performance.now() - t0
const plan = runner.getAccelerationInfo()
console.error(`device: ${plan.deviceDetail}${plan.gpu?.software ? ' (figures on a software adapter are not GPU speed)' : ''}`)

const decodeRates = []
const bench = new Bench({ iterations: Number(o.iterations), warmupIterations: 1, time: 0, warmupTime: 0 })
bench
  .add('prefill', async () => {
    await runner.computeLogits(ids(prefillTokens))
  })
  .add('decode', async () => {
    const r = await runner.generate(ids(32), { maxTokens: decodeTokens, temperature: 0, ignoreEos: true })
    decodeRates.push(r.timings.decodeTokensPerSecond)
  })
await bench.run()
const prefill = bench.getTask('prefill').result
const decodeMeasured = decodeRates.slice(-Number(o.iterations)) // drop the warm-up run
const latency = (r) => r.latency?.mean ?? r.mean
console.log(
  JSON.stringify({
    engine: 'nano-qwen3-serving',
    quantization: o.quantization,
    device: plan.deviceDetail,
    accel: JSON.parse(o.accel),
    weightDtype: runner.getModelInfo().dtype,
    threads: Number(o.threads),
    loadMs,
    prefillTokens,
    prefillTokensPerSecond: (prefillTokens * 1000) / latency(prefill),
    decodeTokens,
    decodeTokensPerSecond: decodeMeasured.reduce((a, b) => a + b, 0) / decodeMeasured.length,
    weightBytes: runner.estimateMemoryUsage().weightBytes,
    peakRssMb: process.resourceUsage().maxRSS / 1024,
  }),
)
await runner.dispose()
