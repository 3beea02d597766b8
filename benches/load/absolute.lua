-- wrk sends origin-form requests; a forward proxy needs absolute-form:
--   wrk -s absolute.lua http://PROXY_HOST:PROXY_PORT/ -- 127.0.0.1:ORIGIN_PORT
local req

init = function(args)
  local target = args[1]
  -- wrk's -H headers too (e.g. -H "Connection: close"); Host names the origin.
  local headers = {}
  for k, v in pairs(wrk.headers) do headers[k] = v end
  headers["Host"] = target
  req = wrk.format("GET", "http://" .. target .. "/", headers)
end

request = function()
  return req
end
