"""`recmesh batch`: Recommend for every user of a file - e-mail and push campaigns - through the
serving path (the gateway's Recommend: the same filters, exclusions, degradation and, once they
business rules as any answer), one JSON line per user.

- Bounded concurrency: `--concurrency` calls in flight (default 2: near the best rate, with no
  degraded answer left, on a 2-core host running the whole mesh - docs/similar.md; more on a
  larger mesh, while the summary's degraded count stays 0; beyond the gateway's MAX_IN_FLIGHT,
  16, answers are shed).
- Resumable: users already in `--out` are skipped and new lines appended; each line is written
  whole with one write, and a line cut by a kill (the file not ending in a newline) is removed
  on the next run, so the file only ever holds whole lines.
- Full answers preferred: an answer that names a degradation (a stage late under load, shed)
  is asked again up to `--retry-degraded` times, a worker's slot spent on it rather than on a
  new user - the batch slows down to what the mesh answers in full; the last answer is kept
  either way (its `degraded` says what it lacks).
- Nothing dropped silently: a user whose call failed (after `--retries` for transient codes) is
  written to the failed file (`--failed`, default OUT.failed.jsonl: user_id, code, details) and
  counted in the summary; the run exits with status 1. The next run asks for them again (they
  are not in --out).

Line: {"user_id", "request_id", "items": [{"item_id", "score", "title", "categories",
"reasons", "attributes"?}], "degraded": [...], "versions": {...}} - request_id is what a
campaign's click events carry (Event.request_id) to be joined with the answer."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from recmesh.v1 import common_pb2, recommendations_pb2, recommendations_pb2_grpc

# Worth asking again: the gateway restarting, a deadline missed under load, a rate limit.
TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                       grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED})
MAX_CONCURRENCY = 64


class RequestRefused(ValueError):
    """The gateway refused the request itself (k, the filters): every user would fail the same."""


@dataclass
class Report:
    users: int  # distinct users in the file
    skipped: int  # already in --out
    answered: int = 0  # written by this run
    degraded: int = 0  # of those, answers that name a degradation (after the retries)
    asked_again: int = 0  # degraded answers asked again
    failed: int = 0
    repaired: bool = False  # a cut last line was removed from --out
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.answered / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.users} users: {self.skipped} already done, {self.answered} answered "
                f"({self.degraded} degraded, {self.asked_again} degraded answers asked again), {self.failed} failed; "
                f"{self.seconds:.1f} s, {rate:.1f} users/s"
                + ("; a cut last line was removed first" if self.repaired else ""))


def read_users(path: Path) -> list[str]:
    """User ids, one a line, surrounding whitespace stripped, blank lines skipped, each once
    (first place kept)."""
    with open(path, encoding="utf-8") as f:
        return list(dict.fromkeys(line.strip() for line in f if line.strip()))


def resume(out: Path) -> tuple[set[str], bool]:
    """(the users --out already holds, whether a cut last line was removed). Only the last line
    can be cut (each is written with one write); any other line that is not a JSON object with a
    user_id stops the run (ValueError naming the line): the file is not one this command wrote."""
    if not out.exists():
        return set(), False
    data = out.read_bytes()
    whole = data[:data.rfind(b"\n") + 1]
    repaired = len(whole) != len(data)
    if repaired:
        with open(out, "r+b") as f:
            f.truncate(len(whole))
            os.fsync(f.fileno())
    done = set()
    for number, line in enumerate(whole.splitlines(), start=1):
        try:
            done.add(json.loads(line)["user_id"])
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{out}:{number}: not a line of recmesh batch (a JSON object with user_id)") from None
    return done, repaired


def _attribute(value: common_pb2.AttributeValue):
    kind = value.WhichOneof("kind")
    return getattr(value, kind) if kind else None


def answer_line(user_id: str, reply: recommendations_pb2.RecommendResponse) -> bytes:
    """One user's answer as a JSON line (UTF-8, ending in a newline)."""
    items = []
    for item in reply.items:
        entry = {"item_id": item.item_id, "score": round(float(item.score), 6), "title": item.title,
                 "categories": list(item.categories), "reasons": list(item.reasons)}
        if item.attributes:
            entry["attributes"] = {name: _attribute(v) for name, v in sorted(item.attributes.items())}
        items.append(entry)
    line = {"user_id": user_id, "request_id": reply.request_id, "items": items, "degraded": list(reply.degraded),
            "versions": dict(sorted(reply.versions.items()))}
    return (json.dumps(line, ensure_ascii=False) + "\n").encode()


async def run_batch(target: str, users: Iterable[str], out: Path, failed_path: Path, k: int,
                    filters: common_pb2.Filters, concurrency: int = 2, timeout_s: float = 2.0, retries: int = 2,
                    retry_degraded: int = 2, surface: str = "", rules: Iterable[common_pb2.Rule] = (),
                    token: str | None = None, progress: bool = True) -> Report:
    """Recommend(user, k, filters) for each user not in `out` yet, `concurrency` calls at a time
    (each within timeout_s seconds; transient failures asked again up to `retries` times, 0.2 s,
    0.4 s ... apart, degraded answers up to `retry_degraded` times, as far apart), one line each
    appended to `out`; failures to `failed_path` (rewritten). surface and rules: each request's
    context.surface (its stored business rules apply) and rules of its own.
    A tqdm bar on stderr unless progress is False. Raises ValueError for an `out` it did not
    write, RequestRefused when the gateway refuses the request itself (INVALID_ARGUMENT naming
    another field than user_id: k, filters) - at the first such answer, lines written so far kept."""
    users = list(dict.fromkeys(users))
    done, repaired = resume(out)
    todo = [u for u in users if u not in done]
    report = Report(users=len(users), skipped=len(users) - len(todo), repaired=repaired)
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    queue: asyncio.Queue[str] = asyncio.Queue()
    for user in todo:
        queue.put_nowait(user)
    started = time.perf_counter()

    from tqdm import tqdm

    for folder in {out.parent, failed_path.parent}:  # e.g. results/ on a fresh clone
        folder.mkdir(parents=True, exist_ok=True)
    # Unbuffered, appending: each line leaves in one write, whole, whatever stops the run after.
    with open(out, "ab", buffering=0) as sink, open(failed_path, "wb", buffering=0) as failures, \
            tqdm(total=len(users), initial=report.skipped, unit="user", desc="batch", file=sys.stderr,
                 disable=not progress) as bar:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = recommendations_pb2_grpc.RecommendationsStub(channel)

            async def ask(user: str) -> recommendations_pb2.RecommendResponse:
                request = recommendations_pb2.RecommendRequest(user_id=user, k=k, filters=filters, rules=list(rules),
                                                               context=common_pb2.Context(surface=surface))
                for attempt in range(retries + 1):
                    try:
                        return await stub.Recommend(request, timeout=timeout_s, metadata=metadata)
                    except grpc.aio.AioRpcError as exc:
                        if exc.code() not in TRANSIENT or attempt == retries:
                            raise
                        await asyncio.sleep(0.2 * 2 ** attempt)
                raise AssertionError("unreachable")

            async def worker() -> None:
                while not queue.empty():
                    user = queue.get_nowait()
                    try:
                        reply = await ask(user)
                        for attempt in range(retry_degraded):
                            if not reply.degraded:
                                break
                            report.asked_again += 1
                            await asyncio.sleep(0.2 * 2 ** attempt)
                            reply = await ask(user)
                    except grpc.aio.AioRpcError as exc:
                        details = exc.details() or ""
                        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and not details.startswith("user_id"):
                            raise RequestRefused(f"the gateway refused the request: {details}") from None
                        report.failed += 1
                        failures.write((json.dumps({"user_id": user, "code": exc.code().name, "details": details},
                                                   ensure_ascii=False) + "\n").encode())
                    else:
                        sink.write(answer_line(user, reply))
                        report.answered += 1
                        report.degraded += bool(reply.degraded)
                    bar.update(1)

            try:  # one worker refused: the others stop too (their users stay to do)
                async with asyncio.TaskGroup() as workers:
                    for _ in range(min(concurrency, max(1, len(todo)))):
                        workers.create_task(worker())
            except* RequestRefused as refused:
                raise refused.exceptions[0] from None
        os.fsync(sink.fileno())
    report.seconds = time.perf_counter() - started
    return report


def _concurrency(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number in 1..{MAX_CONCURRENCY}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The batch subcommand's own flags (the CLI adds Recommend's filter flags)."""
    p.add_argument("--users", required=True, type=Path, help="user ids, one a line")
    p.add_argument("--out", required=True, type=Path,
                   help="JSON lines, one per user, appended; users already in it are skipped (resume)")
    p.add_argument("-k", type=int, default=10, help="items per user (default %(default)s)")
    p.add_argument("--concurrency", type=_concurrency, default=2,
                   help="calls in flight (default %(default)s; above the gateway's MAX_IN_FLIGHT, 16, answers "
                        "are shed)")
    p.add_argument("--retries", type=int, default=2, help="times a transient failure is asked again")
    p.add_argument("--retry-degraded", type=int, default=2,
                   help="times a degraded answer (a stage late under load, shed) is asked again (default %(default)s)")
    p.add_argument("--surface", default="", help="context.surface of each request, e.g. email: its stored rules apply")
    p.add_argument("--failed", type=Path, help="failed users, JSON lines (default: OUT.failed.jsonl)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def run(args, filters: common_pb2.Filters, rules: Iterable[common_pb2.Rule] = ()) -> None:
    """The CLI's `recmesh batch` (args: add_arguments' flags and the CLI's --target, --timeout;
    filters and rules: its filter and --rule flags, read): the summary on stderr; exit status 1
    when any user failed."""
    failed_path = args.failed or args.out.with_name(args.out.name + ".failed.jsonl")
    try:
        users = read_users(args.users)
        report = asyncio.run(run_batch(
            args.target, users, args.out, failed_path, args.k, filters, concurrency=args.concurrency,
            timeout_s=args.timeout, retries=max(0, args.retries), retry_degraded=max(0, args.retry_degraded),
            surface=args.surface, rules=rules,
            token=os.environ.get("RECMESH_TOKEN") or None, progress=not args.no_progress))
    except (OSError, ValueError) as exc:
        sys.exit(f"recmesh batch: {exc}")
    except KeyboardInterrupt:  # every line written is whole: the next run goes on from there
        print(f"\nrecmesh batch: interrupted; run the same command again to resume ({args.out})", file=sys.stderr)
        sys.exit(130)
    print(f"recmesh batch: {report.summary()}", file=sys.stderr)
    if not report.failed:  # nothing to retry: no empty file left beside the output
        failed_path.unlink(missing_ok=True)
    if report.failed:
        sys.exit(f"recmesh batch: {report.failed} users failed (listed in {failed_path}); run again to retry them")
