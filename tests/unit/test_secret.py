"""Secret and redact: every live secret value is masked in outside text, however short."""

import gc

import pytest

from lsproxy.secret import Secret, redact
from lsproxy.upstream.outcome import MAX_DESCRIPTION, classify_end, classify_status


def test_a_secret_is_masked_wherever_it_occurs_while_it_exists() -> None:
    token = Secret("s3cr3t-T0ken-value")
    assert redact("x s3cr3t-T0ken-valuex y") == "x ***x y"
    assert redact('{"token":"s3cr3t-T0ken-value"}') == '{"token":"***"}'
    assert token.reveal() == "s3cr3t-T0ken-value"
    del token
    gc.collect()
    assert redact("s3cr3t-T0ken-value") == "s3cr3t-T0ken-value"  # a value no longer held


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("invalid token abc", "invalid token ***"),
        ("http://h/p?token=abc&x=1", "http://h/p?token=***&x=1"),
        ("abc", "***"),
        ("(abc).", "(***)."),
        ("xabcx abcd 1abc", "xabcx abcd 1abc"),  # inside a longer word: left alone
    ],
)
def test_a_short_secret_is_masked_where_it_stands_alone(text: str, expected: str) -> None:
    secret = Secret("abc")
    assert redact(text) == expected
    del secret


def test_a_one_character_secret_does_not_mangle_text() -> None:
    secret = Secret("a")
    assert redact("a bad token: a") == "*** bad token: ***"
    del secret


def test_percent_encoded_echoes_are_masked() -> None:
    secret = Secret("p@ss w/rd+1é")
    for echo in ("p%40ss+w%2Frd%2B1%C3%A9", "p%40ss%20w/rd%2b1%c3%a9", "p@ss w/rd+1é"):
        assert redact(f"?secret={echo}&next") == "?secret=***&next", echo
    del secret


def test_longer_secrets_are_masked_before_the_shorter_ones_inside_them() -> None:
    key, token = Secret("abcdefgh"), Secret("abcdefgh-0123456789")
    assert redact("abcdefgh-0123456789 and abcdefgh") == "*** and ***"
    del key, token


def test_an_empty_or_blank_secret_masks_nothing() -> None:
    blank, empty = Secret("  "), Secret("")
    assert redact("a  b") == "a  b"
    del blank, empty


def test_upstream_text_is_redacted_before_it_is_cut() -> None:
    secret = Secret("p@ss-w0rd!xyz#4567")  # not token-shaped: only the registry knows it
    body = ("x" * (MAX_DESCRIPTION - 10) + " p@ss-w0rd!xyz#4567").encode()
    out = classify_status(401, body, stream="s")
    assert out.description is not None and "p@ss" not in out.description
    end = classify_end("redirect", "to http://h/?k=p%40ss-w0rd%21xyz%234567", stream="s", streamed=False)
    assert "w0rd" not in end.message and "k=***" in end.message
    del secret
