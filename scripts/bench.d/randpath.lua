-- One random route per request over ROUTES prefixes (/svc<i>/x), plus report.lua's RESULT line.
-- Requests are pre-built in init(): wrk sets the Host header just before calling init().
dofile(os.getenv("BENCH_D") .. "/report.lua")
local n = tonumber(os.getenv("ROUTES") or "10000")
local paths = {}
init = function(args)
  for i = 0, n - 1 do paths[#paths + 1] = wrk.format("GET", "/svc" .. i .. "/x") end
  math.randomseed(os.time() + tonumber(tostring(paths):sub(8), 16) % 100000)
end
request = function() return paths[math.random(1, n)] end
