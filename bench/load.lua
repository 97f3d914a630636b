-- wrk script: cycles through the requests in the file named by BENCH_REQUESTS (one per
-- line: method, path, then header lines and the body, tab-separated as
-- METHOD\tPATH\tname: value\t...\t\tBODY) and prints one JSON line of results.
local requests = {}
local next_one = 1

local function split(line, sep)
  local out, from = {}, 1
  while true do
    local at = string.find(line, sep, from, true)
    if not at then out[#out + 1] = string.sub(line, from); return out end
    out[#out + 1] = string.sub(line, from, at - 1)
    from = at + #sep
  end
end

function init(args)
  local file = assert(io.open(os.getenv("BENCH_REQUESTS"), "r"))
  for line in file:lines() do
    local head_body = split(line, "\t\t")
    local fields = split(head_body[1], "\t")
    local headers = {}
    for i = 3, #fields do
      local name, value = string.match(fields[i], "^([^:]+): (.*)$")
      headers[name] = value
    end
    requests[#requests + 1] = wrk.format(fields[1], fields[2], headers, head_body[2] ~= "" and head_body[2] or nil)
  end
  file:close()
  -- Threads start at different points of the list.
  next_one = (tonumber(string.match(tostring(args[1] or ""), "%d+")) or 0) % #requests + 1
end

function request()
  local r = requests[next_one]
  next_one = next_one % #requests + 1
  return r
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d,"status_errors":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
