-- wrk script: GitLab's sample pipeline delivery, each request with a new Idempotency-Key so every
-- one is a new delivery (stored, processed, logged), not a de-duplicated resend.
local body_file = os.getenv("BODY") or "../../shared/gitlab-reference/samples/webhook-pipeline-event.json"
local f = assert(io.open(body_file, "rb"))
local body = f:read("*a")
f:close()
local counter = 0
local thread_id = 0

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end

function request()
  counter = counter + 1
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-Gitlab-Event"] = "Pipeline Hook",
    ["X-Gitlab-Token"] = os.getenv("HOOK_TOKEN"),
    ["Idempotency-Key"] = string.format("bench-%s-%d-%d", tostring(tid), counter, os.time()),
  }
  return wrk.format("POST", nil, headers, body)
end
