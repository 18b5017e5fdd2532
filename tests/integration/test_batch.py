"""`recmesh batch` against the live mesh: one line per user with k catalog items, a run killed
half way and resumed adds only the missing users (a line cut by the kill repaired), a user the
gateway refuses is reported, not dropped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from recmesh.common.local import REPO
from recmesh.v1 import retrieval_pb2, retrieval_pb2_grpc

pytestmark = pytest.mark.integration

K = 5
BAD = "x" * 129  # longer than an id may be: INVALID_ARGUMENT naming user_id


def batch(stack, users, out, *flags: str) -> list[str]:
    return [sys.executable, "-m", "recmesh", "--target", stack.address("gateway"), "batch", "--users", str(users),
            "--out", str(out), "-k", str(K), *flags]


def lines(path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True) if path.exists() else []


def test_a_killed_batch_resumes_with_only_the_missing_users_and_reports_failures(stack, tmp_path):
    users = [str(u) for u in range(1, 201)]
    users.insert(100, BAD)
    users_file, out = tmp_path / "users.txt", tmp_path / "out.jsonl"
    users_file.write_text("\n".join(users) + "\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    run = subprocess.Popen(batch(stack, users_file, out, "--concurrency", "1", "--no-progress"), cwd=REPO, env=env,
                           stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(lines(out)) < 20 and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait(10)
    before = lines(out)
    assert 20 <= len(before) < len(users) - 1, len(before)  # killed half way
    with open(out, "ab") as f:  # as if the kill had cut a line in two
        f.write(b'{"user_id": "150", "request_id": "r", "ite')

    done = subprocess.run(batch(stack, users_file, out, "--concurrency", "4", "--no-progress"), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "1 failed" in done.stderr and "a cut last line was removed" in done.stderr
    after = lines(out)
    assert after[:len(before)] == before  # the first run's lines kept as they were: only the missing added
    answers = [json.loads(line) for line in after]
    assert sorted(a["user_id"] for a in answers) == sorted(u for u in users if u != BAD)
    failed = [json.loads(line) for line in lines(tmp_path / "out.jsonl.failed.jsonl")]
    assert [(f["user_id"], f["code"]) for f in failed] == [(BAD, "INVALID_ARGUMENT")]
    assert failed[0]["details"].startswith("user_id:")

    items = {i["item_id"] for a in answers for i in a["items"]}
    with grpc.insecure_channel(stack.address("retrieval")) as channel:
        known = retrieval_pb2_grpc.RetrievalStub(channel).GetItems(
            retrieval_pb2.GetItemsRequest(item_ids=sorted(items)), timeout=10)
    assert {c.item_id for c in known.candidates} == items  # every one a catalog item
    for a in answers:
        assert len(a["items"]) == K and len({i["item_id"] for i in a["items"]}) == K, a
        assert a["request_id"] and "index" in a["versions"] and isinstance(a["degraded"], list)

    again = subprocess.run(batch(stack, users_file, out, "--no-progress"), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and lines(out) == after  # only the refused user asked again


def test_a_request_the_gateway_refuses_stops_the_batch_at_once(stack, tmp_path):
    # --out in a folder that does not exist yet (the README's results/recs.jsonl on a fresh clone)
    users_file, out = tmp_path / "users.txt", tmp_path / "results" / "out.jsonl"
    users_file.write_text("1\n2\n3\n")
    done = subprocess.run(batch(stack, users_file, out, "--no-progress", "--include", ""), cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "filters.include_categories[0]" in done.stderr, done.stderr
    assert lines(out) == []
