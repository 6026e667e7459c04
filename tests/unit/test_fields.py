"""fields=: top-level projection that keeps numbers as written, so big ids stay exact."""

import json

import pytest

from lsproxy.serve.fields import FieldsError, parse_fields, project

HIGH, LOW = 2948027281753079808, 4948646782672799561  # both > 2**53


def test_ids_above_2_to_the_53_stay_exact() -> None:
    record = b'{"reportSuite":"r","hitIdHigh":%d,"hitIdLow":%d,"geo":{"c":"fra"},"t":1.50}' % (HIGH, LOW)
    out = project(record, {"hitIdHigh", "hitIdLow", "t"})
    assert out == b'{"hitIdHigh":%d,"hitIdLow":%d,"t":1.50}' % (HIGH, LOW)
    assert json.loads(out)["hitIdLow"] == LOW


def test_nested_values_numbers_and_strings() -> None:
    record = rb' { "a" : [1, {"b": "}", "f": -0.10e+2}] , "s": "\u00e9\"x", "n": null, "t": true } '
    got = project(record, {"a", "s", "n", "t"})
    assert got == '{"a":[1,{"b":"}","f":-0.10e+2}],"s":"é\\"x","n":null,"t":true}'.encode()
    assert json.loads(got) == {k: v for k, v in json.loads(record).items() if k in "asnt"}
    assert project(record, {"missing"}) == b"{}"
    huge = b"9" * 5000  # beyond Python's int parsing limit: copied, never converted
    assert project(b'{"big":%s}' % huge, {"big"}) == b'{"big":%s}' % huge


def test_a_repeated_key_keeps_its_last_value() -> None:
    assert project(b'{"a":1,"b":2,"a":3}', {"a", "b"}) == b'{"a":3,"b":2}'


@pytest.mark.parametrize(
    "record", [b"[1,2]", b"", b"{", b'{"a":}', b'{"a" 1}', b"not json", b"\xff\xfe", b'{"a":' + b"[" * 100_000]
)
def test_a_record_that_is_not_an_object_becomes_empty(record: bytes) -> None:
    assert project(record, {"a"}) == b"{}"


def test_parse_fields() -> None:
    assert parse_fields("hitIdHigh, hitIdLow,hitIdHigh") == ("hitIdHigh", "hitIdLow")
    for bad in ("", "a,,b", ",".join(f"f{i}" for i in range(65)), "x" * 129):
        with pytest.raises(FieldsError):
            parse_fields(bad)
