/**
 * Prometheus text for GET /metrics. The serving gauges and counters carry vLLM's names
 * (`vllm:num_requests_running`, `vllm:kv_cache_usage_perc`, ...) so routers and autoscalers that
 * read vLLM (the Gateway API inference extension, KServe) can read this server too.
 */
import type { ServingInfo } from '../model-runner.js'

const LATENCY_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80]

class Histogram {
  private counts = new Array<number>(LATENCY_BUCKETS.length).fill(0)
  private sum = 0
  private count = 0

  observe(seconds: number, times = 1) {
    for (let i = 0; i < LATENCY_BUCKETS.length; i++) if (seconds <= LATENCY_BUCKETS[i]) this.counts[i] += times
    this.sum += seconds * times
    this.count += times
  }

  render(name: string, help: string, labels: string): string[] {
    const out = [`# HELP ${name} ${help}`, `# TYPE ${name} histogram`]
    LATENCY_BUCKETS.forEach((le, i) => out.push(`${name}_bucket{${labels},le="${le}"} ${this.counts[i]}`))
    out.push(`${name}_bucket{${labels},le="+Inf"} ${this.count}`, `${name}_sum{${labels}} ${this.sum}`, `${name}_count{${labels}} ${this.count}`)
    return out
  }
}

export class Metrics {
  private requests = new Map<string, number>() // finished_reason -> count
  private httpStatus = new Map<number, number>()
  private promptTokens = 0
  private generationTokens = 0
  private ttft = new Histogram()
  private itl = new Histogram()
  private e2e = new Histogram()

  constructor(private modelName: string) {}

  httpResponse(status: number) {
    this.httpStatus.set(status, (this.httpStatus.get(status) ?? 0) + 1)
  }

  finished(reason: string, promptTokens: number, completionTokens: number, e2eSeconds: number) {
    this.requests.set(reason, (this.requests.get(reason) ?? 0) + 1)
    this.promptTokens += promptTokens
    this.generationTokens += completionTokens
    this.e2e.observe(e2eSeconds)
  }

  firstToken(seconds: number) {
    this.ttft.observe(seconds)
  }

  /** A chunk of `tokens` tokens arrived `seconds` after the previous one. */
  interToken(seconds: number, tokens: number) {
    if (tokens > 0) this.itl.observe(seconds / tokens, tokens)
  }

  render(s: ServingInfo): string {
    const l = `model_name="${this.modelName.replace(/["\\\n]/g, '_')}"`
    const one = (name: string, type: 'gauge' | 'counter', help: string, v: number) => [`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, `${name}{${l}} ${v}`]
    const lines = [
      ...one('vllm:num_requests_running', 'gauge', 'Requests in the running batch.', s.runningSequences),
      ...one('vllm:num_requests_waiting', 'gauge', 'Requests waiting for a place in the batch.', s.waitingSequences),
      ...one('vllm:kv_cache_usage_perc', 'gauge', 'Fraction of KV-cache blocks in use (1 = full).', s.blocksTotal ? s.blocksUsed / s.blocksTotal : 0),
      ...one('vllm:prefix_cache_queries_total', 'counter', 'Prompt tokens looked up in the prefix cache.', s.prefixCacheQueriedTokens),
      ...one('vllm:prefix_cache_hits_total', 'counter', 'Prompt tokens found in the prefix cache.', s.prefixCacheHitTokens),
      ...one('vllm:num_preemptions_total', 'counter', 'Requests preempted (KV freed, recomputed later).', s.preemptions),
      ...one('vllm:prompt_tokens_total', 'counter', 'Prompt tokens of finished requests.', this.promptTokens),
      ...one('vllm:generation_tokens_total', 'counter', 'Generated tokens of finished requests.', this.generationTokens),
      ...one('nano_qwen3:kv_cache_blocks_used', 'gauge', 'KV-cache blocks held by running requests.', s.blocksUsed),
      ...one('nano_qwen3:kv_cache_blocks_total', 'gauge', 'KV-cache blocks in the pool.', s.blocksTotal),
      ...one('nano_qwen3:engine_steps_total', 'counter', 'Engine steps (forward calls) run.', s.steps),
      '# HELP vllm:request_success_total Finished requests by finish reason.',
      '# TYPE vllm:request_success_total counter',
      ...[...this.requests].map(([r, n]) => `vllm:request_success_total{${l},finished_reason="${r}"} ${n}`),
      '# HELP nano_qwen3:http_responses_total HTTP responses by status.',
      '# TYPE nano_qwen3:http_responses_total counter',
      ...[...this.httpStatus].sort((a, b) => a[0] - b[0]).map(([st, n]) => `nano_qwen3:http_responses_total{${l},status="${st}"} ${n}`),
      ...this.ttft.render('vllm:time_to_first_token_seconds', 'Time from request to first token.', l),
      ...this.itl.render('vllm:inter_token_latency_seconds', 'Time between output tokens.', l),
      ...this.e2e.render('vllm:e2e_request_latency_seconds', 'Time from request to its end.', l),
    ]
    return lines.join('\n') + '\n'
  }
}
