"""recmesh batch's file handling: what a resumed run skips, a cut last line repaired, a foreign
file refused, the line written per user. The run itself against the mesh:
tests/integration/test_batch.py."""

import json

import pytest

from recmesh.tools.batch import answer_line, read_users, resume
from recmesh.tools.cli import build_parser
from recmesh.v1 import common_pb2, recommendations_pb2


def test_users_are_read_once_each_in_file_order(tmp_path):
    users = tmp_path / "users.txt"
    users.write_text(" 42 \n\n7\n42\n\u00e9t\u00e9\n")
    assert read_users(users) == ["42", "7", "\u00e9t\u00e9"]


def test_a_resumed_run_skips_the_users_written_and_removes_a_cut_last_line(tmp_path):
    out = tmp_path / "out.jsonl"
    assert resume(out) == (set(), False)
    whole = b'{"user_id": "1", "items": []}\n{"user_id": "2", "items": []}\n'
    out.write_bytes(whole + b'{"user_id": "3", "ite')
    assert resume(out) == ({"1", "2"}, True)
    assert out.read_bytes() == whole
    assert resume(out) == ({"1", "2"}, False)


def test_a_file_batch_did_not_write_is_refused_naming_the_line(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"user_id": "1"}\nnot json\n')
    with pytest.raises(ValueError, match=r"out.jsonl:2: not a line of recmesh batch"):
        resume(out)
    assert out.read_text() == '{"user_id": "1"}\nnot json\n'  # left as it was


def test_a_line_holds_the_answer_whole():
    reply = recommendations_pb2.RecommendResponse(request_id="r1", degraded=["brownout:ranker"],
                                                  versions={"ranker": "v2", "index": "i"})
    reply.items.add(item_id="260", title="Star Wars", categories=["Sci-Fi"], score=0.5, reasons=["because"],
                    attributes={"price": common_pb2.AttributeValue(number=9.5),
                                "in_stock": common_pb2.AttributeValue(flag=True)})
    line = answer_line("u\u00e9", reply)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "user_id": "u\u00e9", "request_id": "r1", "degraded": ["brownout:ranker"],
        "versions": {"index": "i", "ranker": "v2"},
        "items": [{"item_id": "260", "score": 0.5, "title": "Star Wars", "categories": ["Sci-Fi"],
                   "reasons": ["because"], "attributes": {"in_stock": True, "price": 9.5}}]}


@pytest.mark.parametrize("concurrency", ["0", "65", "x"])
def test_concurrency_is_bounded(concurrency, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["batch", "--users", "u", "--out", "o", "--concurrency", concurrency])
    assert "--concurrency" in capsys.readouterr().err


def test_batch_takes_recommends_filter_flags():
    args = build_parser().parse_args(["batch", "--users", "u", "--out", "o", "-k", "5", "--exclude", "Horror",
                                      "--range", "price=:50", "--include-seen"])
    assert args.k == 5 and args.exclude == ["Horror"] and args.include_seen and args.concurrency == 2
