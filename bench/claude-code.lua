-- wrk request: one non-stream Messages API call with the 21 request headers of Claude Code
-- 2.1.197 (captured from the real CLI), for `BENCH_SCRIPT=bench/claude-code.lua bench/callgrind.sh`.
wrk.method = "POST"
wrk.path = "/v1/messages?beta=true"
wrk.headers["Accept"] = "application/json"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = "claude-cli/2.1.197 (external, sdk-cli)"
wrk.headers["X-Claude-Code-Session-Id"] = "cfaa3d96-ad41-45b2-9ab0-1b7d2138e0e0"
wrk.headers["X-Stainless-Arch"] = "x64"
wrk.headers["X-Stainless-Lang"] = "js"
wrk.headers["X-Stainless-OS"] = "Linux"
wrk.headers["X-Stainless-Package-Version"] = "0.94.0"
wrk.headers["X-Stainless-Retry-Count"] = "0"
wrk.headers["X-Stainless-Runtime"] = "node"
wrk.headers["X-Stainless-Runtime-Version"] = "v26.3.0"
wrk.headers["X-Stainless-Timeout"] = "600"
wrk.headers["anthropic-beta"] = "claude-code-20250219,context-1m-2025-08-07,interleaved-thinking-2025-05-14,thinking-token-count-2026-05-13,context-management-2025-06-27,prompt-caching-scope-2026-01-05,mid-conversation-system-2026-04-07,effort-2025-11-24"
wrk.headers["anthropic-dangerous-direct-browser-access"] = "true"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.headers["x-app"] = "cli"
wrk.headers["x-api-key"] = os.getenv("BENCH_KEY") or "bench"
wrk.headers["Accept-Encoding"] = "gzip, deflate, br, zstd"
wrk.body = '{"model":"claude-sonnet-4-5","max_tokens":64,"stream":false,"messages":[{"role":"user","content":"hello"}]}'
function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d duration_us=%d errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
