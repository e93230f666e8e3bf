-- wrk_post.lua: POSTs bid requests for `make bench`: every request a new auction_id and the next bidder.
-- wrk -s loadtest/wrk_post.lua URL -- <bidders> <per_call> <run tag>
-- per_call 1 sends a /v1/bid body, more sends a /v1/bids body of that many requests. `done` prints one JSON line.
local bidders, per_call, prefix = 200, 1, "r"
local counter = 0
local headers = {["Content-Type"] = "application/json"}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  bidders = tonumber(args[1]) or bidders
  per_call = tonumber(args[2]) or per_call
  prefix = (args[3] or "r") .. "t" .. tostring(tid) .. "-"
end

local function one()
  counter = counter + 1
  return '{"bidder_id":"b' .. (counter % bidders) .. '","auction_id":"' .. prefix .. counter .. '","bid_micros":2000}'
end

function request()
  if per_call == 1 then
    return wrk.format("POST", nil, headers, one())
  end
  local parts = {}
  for j = 1, per_call do
    parts[j] = one()
  end
  return wrk.format("POST", nil, headers, '{"requests":[' .. table.concat(parts, ",") .. "]}")
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
