-- wrk script: GitLab's sample pipeline delivery, signed as GitLab 19 signs (webhook-id,
-- webhook-timestamp, webhook-signature = HMAC-SHA256 of "id.timestamp.body"), each request with a
-- new id (= Idempotency-Key), so every one is a new delivery. wrk's Lua has no HMAC: the
-- signatures are computed beforehand (SIGNED: one "id timestamp signature" line each).
local f = assert(io.open(os.getenv("BODY"), "rb"))
local body = f:read("*a")
f:close()
local signed = {}
for line in io.lines(os.getenv("SIGNED")) do
  local id, ts, sig = line:match("^(%S+) (%S+) (%S+)$")
  signed[#signed + 1] = { id, ts, sig }
end
local i = 0
local token = os.getenv("HOOK_TOKEN")

function request()
  i = i % #signed + 1
  local s = signed[i]
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["X-Gitlab-Event"] = "Pipeline Hook",
    ["X-Gitlab-Token"] = token,
    ["Idempotency-Key"] = s[1],
    ["webhook-id"] = s[1],
    ["webhook-timestamp"] = s[2],
    ["webhook-signature"] = s[3],
    ["User-Agent"] = "GitLab/19.0.0",
  }, body)
end
