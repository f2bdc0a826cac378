-- wrk_paced.lua: wrk (4.x, no -R option) at a fixed total request rate.
--
--   wrk -t1 -c10 -d10s --timeout 2s -s bench/wrk_paced.lua http://127.0.0.1:8000/ -- 1000
--
-- The rate (requests per second, all threads together) is the first script
-- argument, or else the WRK_RATE environment variable.  Requests use HTTP/1.1
-- keep-alive; a response with "Connection: close" makes wrk open a new
-- connection, which is not an error.
--
-- Pacing uses wrk's delay() hook, called before each request on a connection.
-- Two ways, chosen by WRK_PACING:
--   schedule (the default): each thread hands out send times on a fixed
--     timetable, one every threads*1000/rate ms, to whichever connection asks
--     next; a connection waits until its slot.  The response times and the
--     whole-millisecond rounding of wrk's timer do not slow the rate, and after
--     a stall the connections catch up with the timetable (as wrk2 does).
--     Needs LuaJIT's ffi for a monotonic clock; without it, fixed.
--   fixed: every connection waits connections*1000/rate ms after each
--     response, so the rate is slightly below the target (by latency/delay),
--     and wrk truncates that delay to whole milliseconds.
--
-- done() prints ONE line, a JSON object with the key "wrk_paced":
--   requests, sent, closes (responses with Connection: close), duration_us,
--   bytes, target_rate, threads, connections, pacing,
--   errors {connect, read, write, status (4xx/5xx), timeout},
--   latency_us {p50, p90, p99, p99.9, max, mean}.
-- What wrk counts: "connect" is a connect() that fails at once (a refused one
-- on loopback), after which wrk never reopens that connection; "read" is a
-- read failure or an end of stream in the middle of a response, or on an idle
-- keep-alive connection; "write" a failed send; "status" a status above 399;
-- "timeout" a response that came later than --timeout (its latency is not
-- recorded).  A request still unanswered when the run ends counts nowhere:
-- sent - requests tells how many.  wrk corrects the latency histogram for
-- coordinated omission before done(): a response slower than two periods of
-- a connection adds synthetic samples, one per missed period.

local clock = nil
do
   local ok, ffi = pcall(require, "ffi")
   if ok then
      local defined = pcall(ffi.cdef, [[
         typedef struct { long tv_sec; long tv_nsec; } wrk_paced_timespec;
         int clock_gettime(int clock_id, wrk_paced_timespec *tp);
      ]])
      if defined then
         local ts = ffi.new("wrk_paced_timespec")
         clock = function()  -- CLOCK_MONOTONIC, in milliseconds
            ffi.C.clock_gettime(1, ts)
            return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
         end
      end
   end
end

local function fail(message)
   io.stderr:write("wrk_paced.lua: ", message, "\n")
   os.exit(2)
end

local function metric(text)
   local digits, unit = string.match(text or "", "^(%d+)([kKmMgG]?)$")
   if not digits then return nil end
   local scale = ({ [""] = 1, k = 1e3, m = 1e6, g = 1e9 })[string.lower(unit)]
   return tonumber(digits) * scale
end

-- wrk tells a script neither -t nor -c: read them from our own command line.
local function command_line()
   local threads, connections = 2, 10  -- wrk's defaults
   local file = io.open("/proc/self/cmdline", "rb")
   if not file then return threads, connections end
   local raw = file:read("*a")
   file:close()
   local argv = {}
   for word in string.gmatch(raw, "([^%z]*)%z") do argv[#argv + 1] = word end
   local takes_value = { t = "t", c = "c", d = "d", s = "s", H = "H", T = "T",
      threads = "t", connections = "c", duration = "d", script = "s",
      header = "H", timeout = "T" }
   local i = 2
   while i <= #argv do
      local word = argv[i]
      if word == "--" then break end
      local name, value = nil, nil
      local long, attached = string.match(word, "^%-%-([%w]+)=(.*)$")
      if long then
         name, value = takes_value[long], attached
      elseif string.match(word, "^%-%-%w+$") then
         name = takes_value[string.sub(word, 3)]
      elseif string.match(word, "^%-%a") then
         name = takes_value[string.sub(word, 2, 2)]
         if name and #word > 2 then value = string.sub(word, 3) end
      end
      if name and value == nil then
         i = i + 1
         value = argv[i]
      end
      if name == "t" then threads = metric(value) or threads end
      if name == "c" then connections = metric(value) or connections end
      i = i + 1
   end
   return threads, connections
end

-- Thread states: set by init(), read back by done() in the main state.
rate, pacing, threads, connections = nil, nil, nil, nil
sent, closes = 0, 0

local started = false      -- request() is called once to check it before the run
local interval_ms = nil    -- schedule: this thread's time between two sends
local next_ms = nil        -- schedule: this thread's next send time
local fixed_ms = nil       -- fixed: each connection's wait after a response
local request_text = nil

function init(args)
   rate = tonumber(args[1]) or tonumber(os.getenv("WRK_RATE") or "")
   if not rate or rate <= 0 then
      fail("give the rate in requests/s: wrk ... -s wrk_paced.lua URL -- RATE (or WRK_RATE)")
   end
   threads, connections = command_line()
   local per_thread = math.floor(connections / threads)
   if per_thread < 1 then fail("fewer connections than threads") end
   pacing = os.getenv("WRK_PACING") or "schedule"
   if pacing ~= "schedule" and pacing ~= "fixed" then
      fail("WRK_PACING must be schedule or fixed, not " .. pacing)
   end
   if pacing == "schedule" and clock == nil then pacing = "fixed" end
   interval_ms = threads * 1000 / rate
   fixed_ms = per_thread * threads * 1000 / rate
   request_text = wrk.format()
end

function delay()
   started = true
   if pacing == "fixed" then return fixed_ms end
   local now = clock()
   if next_ms == nil then next_ms = now end
   local wait = next_ms - now
   next_ms = next_ms + interval_ms
   if wait <= 0 then return 0 end
   return math.floor(wait + 0.5)
end

function request()
   if started then sent = sent + 1 end
   return request_text
end

function response(status, headers, body)
   for name, value in pairs(headers) do
      if string.lower(name) == "connection" and string.find(string.lower(value), "close") then
         closes = closes + 1
      end
   end
end

-- Main state: keep the threads to read their counters in done().
local all_threads = {}

function setup(thread)
   all_threads[#all_threads + 1] = thread
end

function done(summary, latency, requests)
   local total_sent, total_closes = 0, 0
   for _, thread in ipairs(all_threads) do
      total_sent = total_sent + (thread:get("sent") or 0)
      total_closes = total_closes + (thread:get("closes") or 0)
   end
   local first = all_threads[1]
   local e = summary.errors
   local function us(value) return string.format("%.0f", value or 0) end
   local fields = {
      '"wrk_paced":1',
      '"requests":' .. us(summary.requests),
      '"sent":' .. us(total_sent),
      '"closes":' .. us(total_closes),
      '"duration_us":' .. us(summary.duration),
      '"bytes":' .. us(summary.bytes),
      '"target_rate":' .. string.format("%.17g", first:get("rate") or 0),
      '"threads":' .. us(first:get("threads")),
      '"connections":' .. us(first:get("connections")),
      '"pacing":"' .. (first:get("pacing") or "") .. '"',
      string.format('"errors":{"connect":%s,"read":%s,"write":%s,"status":%s,"timeout":%s}',
         us(e.connect), us(e.read), us(e.write), us(e.status), us(e.timeout)),
      string.format('"latency_us":{"p50":%s,"p90":%s,"p99":%s,"p99.9":%s,"max":%s,"mean":%s}',
         us(latency:percentile(50)), us(latency:percentile(90)), us(latency:percentile(99)),
         us(latency:percentile(99.9)), us(latency.max), us(latency.mean)),
   }
   io.write("{", table.concat(fields, ","), "}\n")
end
