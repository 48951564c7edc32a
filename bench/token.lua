-- wrk script: POST client_credentials token requests (client_secret_basic), one static request.
-- Environment: BENCH_AUTH   the Authorization header value ("Basic ...")
--              BENCH_SCOPE  the requested scope (optional)
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "wrk_common.lua")

local body = "grant_type=client_credentials"
local scope = os.getenv("BENCH_SCOPE")
if scope and scope ~= "" then body = body .. "&scope=" .. common.form_encode(scope) end

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = common.env("BENCH_AUTH")
wrk.headers["Accept"] = "application/json"

done = common.done
