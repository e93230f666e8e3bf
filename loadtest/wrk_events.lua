-- wrk_events.lua: POSTs win/loss notices to /v1/events for `bench_events.py`, and checks every answer.
-- wrk -s loadtest/wrk_events.lua URL -- <bidders> <batch> <run tag> [bidder token]
-- Every request is a batch of <batch> events, each a fresh auction_id and the next of <bidders> bidders; every
-- LOSS_EVERY-th event is a loss, the rest wins. An answer counts as good only if it is a 200 whose "accepted" is
-- the batch size and "duplicates" 0 (every auction id is new). `done` prints one JSON line: wrk's figures, plus
-- the answers by kind, the events accepted, and the first bad answer's status and body.
local LOSS_EVERY = 10
local PRICE_MICROS = 1500
local bidders, batch, prefix = 200, 1, "r"
local counter = 0
local headers = {["Content-Type"] = "application/json"}
local threads = {}
-- per thread, read in `done` with thread:get
good, non200, miscounted, accepted = 0, 0, 0, 0
first_bad = ""

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  bidders = tonumber(args[1]) or bidders
  batch = tonumber(args[2]) or batch
  prefix = (args[3] or "r") .. "t" .. tostring(tid) .. "-"
  if args[4] and args[4] ~= "" then
    headers["Authorization"] = "Bearer " .. args[4]
  end
end

local function one()
  counter = counter + 1
  local ids = '"bidder_id":"b' .. (counter % bidders) .. '","auction_id":"' .. prefix .. counter .. '"'
  if counter % LOSS_EVERY == 0 then
    return '{"type":"loss",' .. ids .. "}"
  end
  return '{"type":"win",' .. ids .. ',"price_micros":' .. PRICE_MICROS .. "}"
end

function request()
  local parts = {}
  for j = 1, batch do
    parts[j] = one()
  end
  return wrk.format("POST", nil, headers, '{"events":[' .. table.concat(parts, ",") .. "]}")
end

function response(status, _, body)
  if status ~= 200 then
    non200 = non200 + 1
  else
    local n = tonumber(body:match('"accepted":(%d+)'))
    local dups = tonumber(body:match('"duplicates":(%d+)'))
    if n == batch and dups == 0 then
      good = good + 1
      accepted = accepted + n
      return
    end
    miscounted = miscounted + 1
  end
  if first_bad == "" then
    first_bad = status .. " " .. string.sub(body or "", 1, 300)
  end
end

local function escape(s)
  return (s:gsub("[%c\"\\]", function(c) return string.format("\\u%04x", string.byte(c)) end))
end

function done(summary, latency, requests)
  local sum = {good = 0, non200 = 0, miscounted = 0, accepted = 0}
  local bad = ""
  for _, thread in ipairs(threads) do
    for k in pairs(sum) do
      sum[k] = sum[k] + thread:get(k)
    end
    if bad == "" then
      bad = thread:get("first_bad")
    end
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"good":%d,"non200":%d,"miscounted":%d,"accepted":%d,"first_bad":"%s"}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max, e.connect,
    e.read, e.write, e.status, e.timeout, sum.good, sum.non200, sum.miscounted, sum.accepted, escape(bad)))
end
