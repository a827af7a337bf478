-- wrk script for bench/ingest.py: POSTs pre-signed Plaid webhooks, each body once (in order, split
-- between threads), and records the event_id of every 200 so the benchmark can find each one on the
-- queue.  Arguments after "--": <requests file> <ids file prefix> <number of threads>.
-- Requests file: per request a line "<Plaid-Verification JWT> <body length>", the body, a newline.

local threads = {}
local created = 0

function setup(thread)
  thread:set("tid", created)
  created = created + 1
  table.insert(threads, thread)
end

function init(args)
  local path, ids_prefix, nthreads = args[1], args[2], tonumber(args[3])
  reqs = {}
  local f = assert(io.open(path, "rb"))
  local i = 0
  while true do
    local line = f:read("*l")
    if not line then break end
    local sig, len = line:match("^(%S+) (%d+)$")
    local body = f:read(tonumber(len))
    f:read(1)
    if i % nthreads == tid then
      reqs[#reqs + 1] = wrk.format("POST", nil,
        {["Content-Type"] = "application/json", ["Plaid-Verification"] = sig}, body)
    end
    i = i + 1
  end
  f:close()
  idx, wrapped, ok, bad = 0, 0, 0, 0
  ids = assert(io.open(ids_prefix .. "." .. tid, "w"))
  ids:setvbuf("line")
end

function request()
  idx = idx + 1
  if idx > #reqs then
    idx, wrapped = 1, wrapped + 1
  end
  return reqs[idx]
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
    local id = body:match('"event_id": *"([^"]+)"')
    if id then ids:write(id, "\n") end
  else
    bad = bad + 1
  end
end

function done(summary, latency, requests)
  local ok_all, bad_all, wrapped_max = 0, 0, 0
  for _, t in ipairs(threads) do
    ok_all = ok_all + t:get("ok")
    bad_all = bad_all + t:get("bad")
    wrapped_max = math.max(wrapped_max, t:get("wrapped"))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"completed": %d, "duration_s": %.3f, "ok": %d, "non_200": %d, "wrapped": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
    '"p50_ms": %.2f, "p99_ms": %.2f, "max_ms": %.2f, "mean_ms": %.2f}\n',
    summary.requests, summary.duration / 1e6, ok_all, bad_all, wrapped_max,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000, latency.mean / 1000))
end
