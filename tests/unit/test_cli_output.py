"""What the CLI prints of a reply: numbers as numbers, a zero said, empty text left out."""

import json

from recmesh.tools.cli import _print_message
from recmesh.v1 import recommendations_pb2


def test_64_bit_counts_are_numbers_and_a_zero_is_said(capsys):
    _print_message(recommendations_pb2.DeleteUserResponse(events_deleted=441))
    assert json.loads(capsys.readouterr().out) == {"events_deleted": 441}  # proto3 JSON: "441"
    _print_message(recommendations_pb2.DeleteUserResponse())
    assert json.loads(capsys.readouterr().out) == {"events_deleted": 0}  # proto3 JSON: {}


def test_nested_replies_keep_their_text_and_leave_empty_fields_out(capsys):
    reply = recommendations_pb2.RecommendResponse(request_id="r1", total_ms=3.5)
    reply.items.add(item_id="1", title="Toy Story (1995)", score=0.0)
    reply.stage_latency.add(stage="ranker", ms=1.25)
    _print_message(reply)
    shown = json.loads(capsys.readouterr().out)
    assert shown["items"] == [{"item_id": "1", "title": "Toy Story (1995)", "score": 0.0}]
    assert shown["stage_latency"] == [{"stage": "ranker", "ms": 1.25}] and shown["total_ms"] == 3.5
    assert "variant" not in shown and "degraded" not in shown
