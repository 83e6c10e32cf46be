-- wrk script: POST a fixed JSON body, with the Smartflow key and optional
-- provider header; prints one machine-readable RESULT line at the end.
--   BENCH_BODY_FILE  path of the JSON body to send
--   BENCH_AUTH       value of the Authorization header (optional)
--   BENCH_PROVIDER   value of x-smartflow-provider (optional)
--   BENCH_EXTRA_HDR  "name: value" extra headers, one per line (optional; e.g. anthropic-version)
--   BENCH_VARY       a run id: every request's last message starts with "<run id>-<thread>-<n> ",
--                    so no two requests (in this run or any other) share a cache key

local function read_file(path)
   local f = assert(io.open(path, "rb"), "cannot open " .. tostring(path))
   local data = f:read("*a")
   f:close()
   return data
end

wrk.method = "POST"
wrk.body = read_file(os.getenv("BENCH_BODY_FILE"))
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then wrk.headers["Authorization"] = auth end
local provider = os.getenv("BENCH_PROVIDER")
if provider and provider ~= "" then wrk.headers["x-smartflow-provider"] = provider end
local extra = os.getenv("BENCH_EXTRA_HDR")
if extra and extra ~= "" then
   for header in extra:gmatch("[^\n]+") do
      local name, value = header:match("^([^:]+):%s*(.*)$")
      if name then wrk.headers[name] = value end
   end
end

local vary = os.getenv("BENCH_VARY")
if vary and vary ~= "" then
   -- Split the body just inside the last message's content string.
   local at, from = nil, 1
   while true do
      local s, e = wrk.body:find('"content":"', from, true)
      if not s then break end
      at, from = e, e + 1
   end
   assert(at, "BENCH_VARY: the body has no \"content\":\" string")
   local head, tail = wrk.body:sub(1, at), wrk.body:sub(at + 1)
   local threads = 0

   function setup(thread)
      threads = threads + 1
      thread:set("tid", threads)
   end

   local n = 0
   function request()
      n = n + 1
      return wrk.format(nil, nil, nil, head .. vary .. "-" .. tostring(tid) .. "-" .. n .. " " .. tail)
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "RESULT requests=%d duration_us=%d rps=%.1f p50_us=%.1f p90_us=%.1f p99_us=%.1f "
      .. "mean_us=%.1f max_us=%.1f non2xx=%d socket_errors=%d\n",
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.mean, latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
