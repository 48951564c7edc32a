-- wrk script: POST RFC 8693 token-exchange requests (client_secret_basic), one static request.
-- Environment: BENCH_AUTH     the Authorization header value ("Basic ...")
--              BENCH_SUBJECT  the subject token (an upstream JWT)
--              BENCH_SCOPE    the requested scope (optional)
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "wrk_common.lua")

local body = "grant_type=" .. common.form_encode("urn:ietf:params:oauth:grant-type:token-exchange")
  .. "&subject_token=" .. common.form_encode(common.env("BENCH_SUBJECT"))
  .. "&subject_token_type=" .. common.form_encode("urn:ietf:params:oauth:token-type:access_token")
local scope = os.getenv("BENCH_SCOPE")
if scope and scope ~= "" then body = body .. "&scope=" .. common.form_encode(scope) end

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = common.env("BENCH_AUTH")
wrk.headers["Accept"] = "application/json"

done = common.done
