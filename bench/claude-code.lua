-- wrk request: bench/post.lua's non-stream Messages API call, with the 21 request headers of
-- Claude Code 2.1.197 (captured from the real CLI), for
-- `BENCH_SCRIPT=bench/claude-code.lua bench/callgrind.sh`.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "post.lua")

wrk.path = "/v1/messages?beta=true"
local headers = {
  ["Accept"] = "application/json",
  ["Content-Type"] = "application/json",
  ["User-Agent"] = "claude-cli/2.1.197 (external, sdk-cli)",
  ["X-Claude-Code-Session-Id"] = "cfaa3d96-ad41-45b2-9ab0-1b7d2138e0e0",
  ["X-Stainless-Arch"] = "x64",
  ["X-Stainless-Lang"] = "js",
  ["X-Stainless-OS"] = "Linux",
  ["X-Stainless-Package-Version"] = "0.94.0",
  ["X-Stainless-Retry-Count"] = "0",
  ["X-Stainless-Runtime"] = "node",
  ["X-Stainless-Runtime-Version"] = "v26.3.0",
  ["X-Stainless-Timeout"] = "600",
  ["anthropic-beta"] = "claude-code-20250219,context-1m-2025-08-07,interleaved-thinking-2025-05-14,thinking-token-count-2026-05-13,context-management-2025-06-27,prompt-caching-scope-2026-01-05,mid-conversation-system-2026-04-07,effort-2025-11-24",
  ["anthropic-dangerous-direct-browser-access"] = "true",
  ["x-app"] = "cli",
  ["Accept-Encoding"] = "gzip, deflate, br, zstd",
}
-- post.lua's own lower-case names give way to the client's spelling.
wrk.headers["content-type"] = nil
for name, value in pairs(headers) do
  wrk.headers[name] = value
end
