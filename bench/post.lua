-- wrk request: one Messages API call, stream or not per BENCH_STREAM.
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.headers["x-api-key"] = os.getenv("BENCH_KEY") or "bench"
local stream = os.getenv("BENCH_STREAM") == "1"
wrk.body = '{"model":"claude-sonnet-4-5","max_tokens":64,"stream":' .. tostring(stream) ..
  ',"messages":[{"role":"user","content":"hello"}]}'

function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d duration_us=%d errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
