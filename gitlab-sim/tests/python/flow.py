"""Drives gitlab-sim with python-gitlab, a GitLab client written by others, through a whole build.

Environment: SIM_URL, SIM_TOKEN, HOOK_URL. Prints one JSON line with what it saw; exits non-zero on
any mismatch.
"""
import io
import json
import os
import sys
import time
import zipfile

import gitlab

gl = gitlab.Gitlab(os.environ["SIM_URL"], private_token=os.environ["SIM_TOKEN"], retry_transient_errors=True)
gl.auth()
assert gl.user.username == "root", gl.user.username

project = gl.projects.get("acme/firmware")
assert project.id == 1 and project.path_with_namespace == "acme/firmware"

hook = project.hooks.create(
    {"url": os.environ["HOOK_URL"], "pipeline_events": True, "job_events": True, "token": "py-token", "name": "py"}
)
assert hook.pipeline_events and hook.token_present

pipeline = project.pipelines.create({"ref": "main", "variables": [{"key": "BOARD", "value": "python-board"}]})
deadline = time.time() + 90
while True:
    pipeline.refresh()
    if pipeline.status in ("success", "failed", "canceled", "skipped"):
        break
    if time.time() > deadline:
        sys.exit(f"pipeline still {pipeline.status}")
    time.sleep(0.2)
assert pipeline.status == "success", pipeline.status

jobs = pipeline.jobs.list(get_all=True)
by_name = {j.name: j for j in jobs}
assert sorted(by_name) == ["build", "deploy", "test"], sorted(by_name)
build = project.jobs.get(by_name["build"].id)
trace = build.trace().decode()
assert "built acme/firmware main" in trace, trace

archive = zipfile.ZipFile(io.BytesIO(build.artifacts()))
firmware = archive.read("out/firmware.bin").decode()
assert firmware.startswith("firmware for python-board"), firmware

mr = project.mergerequests.create({"source_branch": "feature", "target_branch": "main", "title": "From python-gitlab"})
assert mr.state == "opened" and mr.iid == 1

print(json.dumps({
    "pipeline": pipeline.id,
    "status": pipeline.status,
    "jobs": sorted(by_name),
    "firmware": firmware.strip(),
    "merge_request": mr.web_url,
    "python_gitlab": gitlab.__version__,
}))
