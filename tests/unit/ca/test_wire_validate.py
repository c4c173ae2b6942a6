"""SSH wire encoding (RFC 4251) and the validation of small strings that cross trust boundaries."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jit_ssh.ca import InputError
from jit_ssh.ca.validate import (
    MAX_PRINCIPALS,
    check_hostname,
    check_key_id,
    check_login,
    check_principal,
    format_duration,
    parse_duration,
    target_principal,
)
from jit_ssh.ca.wire import Reader, mpint, string, uint32, uint64

# -- wire ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00\x00\x00\x00"),
        (0x7F, b"\x00\x00\x00\x01\x7f"),
        (0x80, b"\x00\x00\x00\x02\x00\x80"),  # a leading zero keeps it positive
        (0x9A378F9B2E332A7, b"\x00\x00\x00\x08\x09\xa3\x78\xf9\xb2\xe3\x32\xa7"),  # RFC 4251's example
    ],
)
def test_mpint_encoding_matches_rfc4251(value: int, encoded: bytes) -> None:
    assert mpint(value) == encoded
    assert Reader(encoded).mpint() == value


def test_mpint_refuses_negative_values() -> None:
    with pytest.raises(ValueError, match="negative"):
        mpint(-1)
    with pytest.raises(InputError, match="negative"):
        Reader(b"\x00\x00\x00\x01\xff").mpint()


def test_reader_reads_what_the_encoders_write() -> None:
    data = uint32(7) + uint64(2**64 - 1) + string(b"bytes") + string("text \u00e9".encode()) + b"\x05"
    reader = Reader(data)
    assert reader.uint32() == 7
    assert reader.uint64() == 2**64 - 1
    assert reader.string() == b"bytes"
    assert reader.text() == "text \u00e9"
    assert not reader.at_end()
    assert reader.byte() == 5
    assert reader.at_end()
    reader.expect_end()


@pytest.mark.parametrize(
    ("data", "read", "match"),
    [
        (b"\x00\x00\x00", Reader.uint32, "truncated"),
        (b"\x00" * 7, Reader.uint64, "truncated"),
        (b"\x00\x00\x00\x05abc", Reader.string, "truncated"),
        (b"\xff\xff\xff\xff", Reader.string, "truncated"),
        (b"\x00\x00\x00\x01\xff", Reader.text, "not UTF-8"),
        (b"", Reader.byte, "truncated"),
    ],
)
def test_reader_refuses_malformed_data_naming_what(data: bytes, read: object, match: str) -> None:
    reader = Reader(data, "the thing")
    with pytest.raises(InputError, match=match) as info:
        read(reader)  # type: ignore[operator]
    assert "the thing" in str(info.value)


def test_expect_end_refuses_trailing_bytes() -> None:
    reader = Reader(b"\x00\x00\x00\x00extra", "blob")
    reader.string()
    assert reader.remaining() == b"extra"
    reader = Reader(b"\x00\x00\x00\x00extra", "blob")
    reader.string()
    with pytest.raises(InputError, match="5 unexpected trailing bytes"):
        reader.expect_end()


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64))
def test_reader_raises_only_input_error(data: bytes) -> None:
    for read in (Reader.byte, Reader.uint32, Reader.uint64, Reader.string, Reader.text, Reader.mpint):
        reader = Reader(data)
        with contextlib.suppress(InputError):
            while not reader.at_end():
                read(reader)


@settings(max_examples=200, deadline=None)
@given(value=st.integers(min_value=0, max_value=2**600), blob=st.binary(max_size=100))
def test_encoders_round_trip(value: int, blob: bytes) -> None:
    reader = Reader(mpint(value) + string(blob))
    assert reader.mpint() == value
    assert reader.string() == blob
    reader.expect_end()


# -- validation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["prod-web-3", "a", "db-1.eu-west.example.net", "x" * 63, "1host"])
def test_hostnames_accepted(value: str) -> None:
    assert check_hostname(value) == value


@pytest.mark.parametrize(
    "value", ["", "-lead", "trail-", "a..b", "a b", "a_b", "host;rm", "h\u00f6st", "x" * 64, ".".join(["a"] * 128)]
)
def test_hostnames_refused(value: str) -> None:
    with pytest.raises(InputError, match="host name") as info:
        check_hostname(value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", ["ubuntu", "root", "_svc", "deploy-bot", "a.b", "u" * 32])
def test_logins_accepted(value: str) -> None:
    assert check_login(value) == value


@pytest.mark.parametrize("value", ["", "Ubuntu", "1user", "-x", "u" * 33, "a b", "a@b", "user$", "a\nb"])
def test_logins_refused(value: str) -> None:
    with pytest.raises(InputError, match="login name"):
        check_login(value)


@pytest.mark.parametrize("value", ["ubuntu@prod-web-3", "a", "x:y+z=w", "p" * 255])
def test_principals_accepted(value: str) -> None:
    assert check_principal(value) == value


@pytest.mark.parametrize("value", ["", "a b", "a,b", "a\tb", "a\nb", "*", "a?", "p" * 256, "caf\u00e9", "a#b"])
def test_principals_refused(value: str) -> None:
    with pytest.raises(InputError, match="principal"):
        check_principal(value)


def test_target_principal_is_login_at_host() -> None:
    assert target_principal("ubuntu", "prod-web-3") == "ubuntu@prod-web-3"
    with pytest.raises(InputError, match="login"):
        target_principal("Ubuntu", "prod-web-3")
    with pytest.raises(InputError, match="host name"):
        target_principal("ubuntu", "prod web")
    assert MAX_PRINCIPALS == 256


@pytest.mark.parametrize("value", ["request 1 user alice", "x", "k" * 256, "!~ printable"])
def test_key_ids_accepted(value: str) -> None:
    assert check_key_id(value) == value


@pytest.mark.parametrize("value", ["", "k" * 257, "tab\there", "new\nline", "caf\u00e9", "nul\x00"])
def test_key_ids_refused(value: str) -> None:
    with pytest.raises(InputError, match="key id"):
        check_key_id(value)


def test_refusal_messages_shorten_long_input() -> None:
    with pytest.raises(InputError) as info:
        check_hostname("x" * 10_000)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("4h", timedelta(hours=4)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2d", timedelta(days=2)),
        ("45", timedelta(minutes=45)),
        (" 1H ", timedelta(hours=1)),
        ("366d", timedelta(days=366)),
    ],
)
def test_durations_parsed(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "0", "0m", "-5m", "1y", "h", "1m1h", "367d", "1.5h", "9999999", "1h 30m", "\u00b9", "\u0665m", "\u0665"],
)
def test_durations_refused(text: str) -> None:
    with pytest.raises(InputError, match="duration"):
        parse_duration(text)


@settings(max_examples=200, deadline=None)
@given(seconds=st.integers(min_value=1, max_value=366 * 86400))
def test_format_then_parse_duration_round_trips(seconds: int) -> None:
    delta = timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=40))
def test_validators_raise_only_input_error(text: str) -> None:
    for check in (check_hostname, check_login, check_principal, check_key_id, parse_duration):
        with contextlib.suppress(InputError):
            check(text)  # type: ignore[operator]
