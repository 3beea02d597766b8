-- wrk sends origin-form requests; a forward proxy needs absolute-form:
--   wrk -s absolute.lua http://PROXY_HOST:PROXY_PORT/ -- 127.0.0.1:ORIGIN_PORT
local req

init = function(args)
  local target = args[1]
  req = wrk.format("GET", "http://" .. target .. "/", { ["Host"] = target })
end

request = function()
  return req
end
