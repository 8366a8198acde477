-- wrk -s bench/wrk_post.lua: every request a POST. BENCH_BODY and
-- BENCH_TYPE pick the body (JSON for the APIs, a form for the seed's page),
-- BENCH_TOKEN adds the bearer token mqsite's API asks for.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or '{"task": "tasks.tasks.noop"}'
wrk.headers["Content-Type"] = os.getenv("BENCH_TYPE") or "application/json"
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
