-- wrk script for benchmarks/cds_hooks_wrk.py: every call is a new encounter-start for a new patient.
--
--   wrk -s cds_hooks_wrk.lua URL -- TEMPLATE TOKENS TAG
--
-- TEMPLATE is the request body with @@PID@@ (the patientId, also in every reference to the Patient) and
-- @@HOOK@@ (the hookInstance) left open; it is split once per thread, and each call joins the pieces with a
-- fresh patient id (so the replay cache and the card claim do real work: nothing is suppressed) and a fresh
-- UUID. TOKENS holds pre-signed client JWTs, one per line, each with its own jti; thread i of n uses lines
-- i, i+n, i+2n ... so no token is sent twice. Running out of tokens is counted (`reused`): the benchmark
-- sizes the file so that it never happens and refuses a round where it did. A response that is not a 200
-- with a card is counted in `nocard`.
--
-- done() prints one line, `WRKJSON {...}`, that the benchmark reads.

local threads = {}
local counter = 1

function setup(thread)
  thread:set("tid", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

local pieces, kinds, tokens = {}, {}, {}
local n, ntokens, step, nth = 0, 0, 1, 0
local tag = "x"
nocard, reused, sent = 0, 0, 0

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

function init(args)
  local template = read(args[1])
  for line in read(args[2]):gmatch("[^\n]+") do
    table.insert(tokens, line)
  end
  ntokens = #tokens
  tag = args[3] or "x"
  step = tonumber(args[4] or "1")
  nth = tid - 1
  -- split the template at the placeholders
  local pos = 1
  while true do
    local a = template:find("@@", pos, true)
    if not a then break end
    table.insert(pieces, template:sub(pos, a - 1))
    if template:sub(a, a + 6) == "@@PID@@" then
      table.insert(kinds, "pid")
      pos = a + 7
    elseif template:sub(a, a + 7) == "@@HOOK@@" then
      table.insert(kinds, "hook")
      pos = a + 8
    else
      error("unexpected placeholder at " .. a)
    end
  end
  table.insert(pieces, template:sub(pos))
end

local function uuid(i)
  return string.format("%08x-%04x-4%03x-8%03x-%012x", math.random(0, 0x7fffffff), tid, i % 4096,
                       math.random(0, 4095), i)
end

function request()
  n = n + 1
  local k = nth + (n - 1) * step + 1
  if k > ntokens then
    reused = reused + 1
    k = ((k - 1) % ntokens) + 1
  end
  sent = sent + 1
  local pid = string.format("b%s-%d-%09d", tag, tid, n)
  local hook = uuid(n)
  local out = {}
  for i = 1, #kinds do
    out[#out + 1] = pieces[i]
    if kinds[i] == "pid" then out[#out + 1] = pid else out[#out + 1] = hook end
  end
  out[#out + 1] = pieces[#pieces]
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. tokens[k]}
  return wrk.format("POST", nil, headers, table.concat(out))
end

function response(status, headers, body)
  if status ~= 200 or not body:find('"cards"%s*:%s*%[%s*{') then
    nocard = nocard + 1
  end
end

function done(summary, latency, requests)
  local nc, ru, st = 0, 0, 0
  for _, t in ipairs(threads) do
    nc = nc + t:get("nocard")
    ru = ru + t:get("reused")
    st = st + t:get("sent")
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "status_errors": %d, "timeouts": %d, "nocard": %d, "reused_tokens": %d, "sent": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    nc, ru, st, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
    latency.max))
end
