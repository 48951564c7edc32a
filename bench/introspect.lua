-- wrk script: POST RFC 7662 introspection requests, cycling through pre-issued tokens.
-- Environment: BENCH_AUTH    the Authorization header value ("Basic ...")
--              BENCH_TOKENS  file with one access token per line
--              BENCH_THREADS the -t given to wrk (to spread the threads' starting points)
-- Every wrk thread loads all tokens and pre-builds one request per token; thread i of n
-- starts at token (i-1)*N/n, and all of the thread's connections share one cursor, so
-- consecutive requests carry consecutive tokens and the whole file is cycled through.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "wrk_common.lua")

-- setup() runs in wrk's main Lua state, once per thread, just before that thread's init().
local next_id = 1
function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
end

local reqs = {}
local n = 0
local cursor = 0

function init(args)
  local path = common.env("BENCH_TOKENS")
  local auth = common.env("BENCH_AUTH")
  local headers = {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Authorization"] = auth,
    ["Accept"] = "application/json",
  }
  for line in io.lines(path) do
    if line ~= "" then
      n = n + 1
      reqs[n] = wrk.format("POST", wrk.path, headers, "token=" .. common.form_encode(line))
    end
  end
  if n == 0 then error("no tokens in " .. path) end
  local id = thread_id or 1
  local nthreads = math.max(tonumber(os.getenv("BENCH_THREADS") or "1") or 1, id)
  cursor = math.floor((id - 1) * n / nthreads) % n
end

function request()
  cursor = cursor + 1
  if cursor > n then cursor = 1 end
  return reqs[cursor]
end

done = common.done
