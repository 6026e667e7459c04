"""Server-Sent Events framing."""

from lsproxy.serve.sse import HEARTBEAT, event, gap_event, wants_event_stream


def test_event_has_the_offset_as_id_and_the_record_as_data() -> None:
    assert event(42, b'{"a":1}') == b'id: 42\ndata: {"a":1}\n\n'


def test_a_carriage_return_in_a_record_becomes_several_data_lines() -> None:
    assert event(1, b'{"a":"x\ry"}') == b'id: 1\ndata: {"a":"x\ndata: y"}\n\n'


def test_gap_and_heartbeat() -> None:
    assert gap_event(17) == b'event: gap\ndata: {"skipped": 17}\n\n'
    assert HEARTBEAT.startswith(b":") and HEARTBEAT.endswith(b"\n\n")


def test_wants_event_stream() -> None:
    assert wants_event_stream("text/event-stream")
    assert wants_event_stream("application/json, Text/Event-Stream;q=0.5")
    assert not wants_event_stream("text/event-stream;q=0")
    assert not wants_event_stream("*/*")
    assert not wants_event_stream("")
