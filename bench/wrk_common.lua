-- Shared by token.lua and introspect.lua (loaded with dofile from the script's own folder).
-- done() prints one machine-readable line that bench/report.py reads:
--   BENCHJSON {"requests":..,"rps":..,"p50_us":..,"p99_us":..,...}

local M = {}

-- application/x-www-form-urlencoded value encoding.
function M.form_encode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", string.byte(c)) end))
end

function M.env(name)
  local v = os.getenv(name)
  if v == nil or v == "" then error(name .. " must be set") end
  return v
end

function M.done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_s":%.3f,"rps":%.2f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_timeout":%d,"errors_status":%d}\n',
    summary.requests, secs, summary.requests / secs,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.timeout, e.status))
end

return M
