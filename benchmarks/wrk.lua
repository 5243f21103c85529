-- wrk script: every request is a random line of a prepared request file.
-- Arguments (after --): <requests file> [<body file>]
-- Each line of the requests file is "METHOD path?query". A body file, when given, is sent with
-- every request (PUT). Requests are formatted once in init(), so request() only picks one: the
-- load generator spends its time on the network, not on Lua.
local prepared = {}
local count = 0

function init(args)
  local body = nil
  if args[2] then
    local f = assert(io.open(args[2], "rb"))
    body = f:read("*a")
    f:close()
  end
  for line in io.lines(args[1]) do
    local method, path = line:match("^(%u+) (.+)$")
    if method then
      count = count + 1
      prepared[count] = wrk.format(method, path, {}, body)
    end
  end
  assert(count > 0, "no requests in " .. args[1])
  -- Each wrk thread has its own Lua state: seed each one differently.
  math.randomseed(os.time() + tonumber(tostring(prepared):match("0x(%x+)") or "0", 16) % 100000)
end

function request()
  return prepared[math.random(count)]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
