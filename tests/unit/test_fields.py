"""fields=: top-level projection that copies value text, so big ids stay exact."""

import json

import pytest

from lsproxy.serve.fields import FieldsError, parse_fields, project

HIGH, LOW = 2948027281753079808, 4948646782672799561  # both > 2**53


def test_ids_above_2_to_the_53_stay_exact() -> None:
    record = b'{"reportSuite":"r","hitIdHigh":%d,"hitIdLow":%d,"geo":{"c":"fra"},"t":1.50}' % (HIGH, LOW)
    out = project(record, {"hitIdHigh", "hitIdLow", "t"})
    assert out == b'{"hitIdHigh":%d,"hitIdLow":%d,"t":1.50}' % (HIGH, LOW)
    assert json.loads(out)["hitIdLow"] == LOW


def test_nested_values_strings_and_whitespace_are_copied_verbatim() -> None:
    record = b' { "a" : [1, {"b": "}"}] , "s": "\\u00e9\\"x", "n": null } '
    assert project(record, {"a", "s", "n"}) == b'{"a":[1, {"b": "}"}],"s":"\\u00e9\\"x","n":null}'
    assert project(record, {"missing"}) == b"{}"
    assert project('{"é":"ü"}'.encode(), {"é"}) == '{"é":"ü"}'.encode()


def test_a_repeated_key_keeps_its_last_value() -> None:
    assert project(b'{"a":1,"b":2,"a":3}', {"a", "b"}) == b'{"b":2,"a":3}'


@pytest.mark.parametrize("record", [b"[1,2]", b"", b"{", b'{"a":}', b'{"a" 1}', b"not json", b"\xff\xfe"])
def test_a_record_that_is_not_an_object_becomes_empty(record: bytes) -> None:
    assert project(record, {"a"}) == b"{}"


def test_parse_fields() -> None:
    assert parse_fields("hitIdHigh, hitIdLow,hitIdHigh") == ("hitIdHigh", "hitIdLow")
    for bad in ("", "a,,b", ",".join(f"f{i}" for i in range(65)), "x" * 129):
        with pytest.raises(FieldsError):
            parse_fields(bad)
