"""The recording reader against whatever a file may hold (DESIGN.md, invariant 5: every recording is readable).

Hypothesis writes files of arbitrary bytes, recordings of both formats with arbitrary frames (any code,
any time, lengths that lie, cut anywhere), compressed in arbitrary flushes or not, and reads each one
through every reader a review tool uses (``read_recording``, ``follow_frames``, ``to_asciicast``):

* nothing but :class:`RecordingFormatError` ever comes out, and the readers agree with each other;
* a well-formed recording reads back exactly; cut short anywhere, it reads up to its last complete
  frame and says it was cut (``truncated``), unless the cut fell between two flushes;
* a recording written by :class:`Recorder` reads back exactly: data over 1 MiB comes back whole from
  the frames it was split into, long header values from the frames they were moved to;
* the reader streams: while it iterates, it holds a bounded multiple of the largest frame (or header)
  and a constant, never the whole file, however well it compresses (tracemalloc's peak).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import struct
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jit_ssh.broker.recording.asciicast import to_asciicast
from jit_ssh.broker.recording.format import (
    MAGIC,
    MAGIC_V2,
    MAX_FRAME,
    Frame,
    RecordingFormatError,
    follow_frames,
    read_recording,
)
from jit_ssh.broker.recording.recorder import Recorder

_FRAME = struct.Struct(">cdI")
_U32 = struct.Struct(">I")
#: Memory a reader may hold beyond its largest item: read buffers (256 KiB) and the interpreter's own.
SLACK = 4 * 1024 * 1024
#: ... and how many copies of its largest item (the parser's buffer, the frame, the decompressed chunk).
COPIES = 4
#: Export writes text: a NUL byte is six characters of JSON, a byte that is not UTF-8 a U+FFFD and base64.
EXPORT_COPIES = 48
FUZZ = settings(max_examples=120, deadline=timedelta(seconds=10), suppress_health_check=[HealthCheck.too_slow])

_names = itertools.count()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-recording")


def _file(workdir: Path, data: bytes) -> Path:
    """``data`` as the file the readers read next; the one before is removed (an example reads hundreds).

    A new name each time: ext4 writes a file emptied and written again to disk at once, which is slow."""
    for old in workdir.glob("fuzz-*.cast"):
        old.unlink()
    path = workdir / f"fuzz-{next(_names)}.cast"
    path.write_bytes(data)
    return path


# -- building recordings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """One frame as bytes on disk: its code, time and payload, and the length it claims."""

    code: bytes
    moment: float
    payload: bytes
    declared: int | None = None  # None: the payload's true length

    def encode(self) -> bytes:
        length = len(self.payload) if self.declared is None else self.declared
        return _FRAME.pack(self.code, self.moment, length) + self.payload


def header_bytes(version: int, body: bytes, declared: int | None = None) -> bytes:
    if version == 1:
        return MAGIC + body.replace(b"\n", b" ") + b"\n"
    return MAGIC_V2 + _U32.pack(len(body) if declared is None else declared) + body


def compress(log: bytes, cuts: list[int]) -> tuple[bytes, list[int]]:
    """``log`` as the writer puts it on disk: one checksummed zstd frame per flush, flushes ending at ``cuts``.

    Returns the file and, for each flush, the offset in the file where it ends.
    """
    compressor = zstandard.ZstdCompressor(level=1, write_checksum=True)
    ends, out, start = [], bytearray(), 0
    for cut in sorted({*cuts, len(log)}):
        if start < cut <= len(log):
            out += compressor.compress(log[start:cut])
            ends.append(len(out))
            start = cut
    return bytes(out), ends


# -- reading them every way ----------------------------------------------------------------------------

#: What a reader saw: the header, each frame as (code, time, length, sha256), whether it was cut, the error.
Seen = tuple[dict[str, Any] | None, list[tuple[str, float, int, str]], bool, str | None]


def _digest(frame: Frame) -> tuple[str, float, int, str]:
    return frame.code, frame.time, len(frame.payload), hashlib.sha256(frame.payload).hexdigest()


def read_whole(path: Path) -> Seen:
    """read_recording to the end, keeping no frame (so memory measures the reader, not the test)."""
    header: dict[str, Any] | None = None
    seen: list[tuple[str, float, int, str]] = []
    try:
        header, frames, truncated = read_recording(path)
        for frame in frames:
            seen.append(_digest(frame))
    except RecordingFormatError as exc:
        return header, seen, False, exc.message
    return header, seen, truncated[0], None


def follow_whole(path: Path) -> Seen:
    header: dict[str, Any] | None = None
    seen: list[tuple[str, float, int, str]] = []

    async def run() -> None:
        nonlocal header
        async for head, frame in follow_frames(path, live=lambda: False, poll=0.01):
            header = head
            if frame is not None:
                seen.append(_digest(frame))

    try:
        asyncio.run(run())
    except RecordingFormatError as exc:
        return header, seen, False, exc.message
    return header, seen, False, None


class _Sink(io.StringIO):
    """A text stream that counts what is written and keeps none of it."""

    def __init__(self) -> None:
        super().__init__()
        self.lines = 0

    def write(self, text: str) -> int:
        self.lines += text.count("\n")
        return len(text)


def export_whole(path: Path) -> str | None:
    try:
        to_asciicast(path, _Sink())
    except RecordingFormatError as exc:
        return exc.message
    return None


def every_reader(path: Path) -> Seen:
    """Read ``path`` with each reader: only RecordingFormatError may come out, and they agree."""
    whole = read_whole(path)
    header, frames, _, error = whole
    followed = follow_whole(path)
    assert followed[0] == header or error is not None
    assert followed[1] == frames
    assert (followed[3] is None) == (error is None), (followed[3], error)
    assert (export_whole(path) is None) == (error is None)
    for message in (error, followed[3]):
        assert message is None or ("\n" not in message and len(message) < 1000)
    return whole


def peak_memory(read: Callable[[], object]) -> int:
    """The most memory Python held at once while ``read`` ran, above what it held before."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        read()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


# -- strategies ----------------------------------------------------------------------------------------

CODES = st.sampled_from([b"o", b"e", b"i", b"r", b"x"])
ANY_CODE = st.one_of(CODES, st.binary(min_size=1, max_size=1))
GOOD_TIMES = st.floats(min_value=0, max_value=1e9, allow_nan=False)
ANY_TIME = st.one_of(GOOD_TIMES, st.floats(), st.sampled_from([float("nan"), float("inf"), -0.0, -1.0, 1e308]))


class Run(bytes):
    """A long run of one byte, shown short in hypothesis's reports."""

    def __repr__(self) -> str:
        return f"Run({self[:1]!r} * {len(self)})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


@st.composite
def payloads(draw: st.DrawFn, big: bool = False) -> bytes:
    """Short arbitrary bytes, or a long run of one byte (compresses to almost nothing)."""
    if big and draw(st.booleans()):
        size = draw(st.one_of(st.sampled_from([MAX_FRAME, MAX_FRAME // 2, 64 * 1024]), st.integers(0, MAX_FRAME)))
        return Run(bytes([draw(st.integers(0, 255))]) * size)
    return draw(st.binary(max_size=300))


GOOD_FRAMES = st.builds(Raw, CODES, GOOD_TIMES, payloads())
HEADERS = st.fixed_dictionaries(
    {"version": st.just(2), "width": st.integers(1, 500), "height": st.integers(1, 200)},
    optional={"title": st.text(max_size=40), "jit_ssh": st.dictionaries(st.text(max_size=8), st.text(max_size=40))},
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


@st.composite
def hostile_frames(draw: st.DrawFn) -> Raw:
    declared = draw(st.one_of(st.none(), st.integers(0, 2**32 - 1), st.sampled_from([2**32 - 1, 16 * MAX_FRAME + 1])))
    return Raw(draw(ANY_CODE), draw(ANY_TIME), draw(payloads()), declared)


@st.composite
def header_bodies(draw: st.DrawFn) -> bytes:
    """A header that may be anything: a good one, any JSON, bytes that are not JSON or not UTF-8."""
    kind = draw(st.sampled_from(["good", "json", "bytes", "deep"]))
    if kind == "good":
        return json.dumps(draw(HEADERS)).encode()
    if kind == "json":
        return json.dumps(draw(JSON)).encode()
    if kind == "deep":
        depth = draw(st.integers(0, 5000))
        return b'{"a": ' + b"[" * depth + b"]" * depth + b"}"
    return draw(st.binary(max_size=200))


# -- arbitrary files -------------------------------------------------------------------------------------


@FUZZ
@given(
    prefix=st.sampled_from([b"", MAGIC, MAGIC_V2, MAGIC_V2 + b"\x00\x00\x00\x02{}", b"\x28\xb5\x2f\xfd", MAGIC[:5]]),
    data=st.binary(max_size=2000),
    compressed=st.booleans(),
)
def test_any_bytes_give_frames_or_one_format_error(workdir: Path, prefix: bytes, data: bytes, compressed: bool) -> None:
    blob = prefix + data
    if compressed:
        blob, _ = compress(blob, [len(prefix)])
    every_reader(_file(workdir, blob))


@FUZZ
@given(
    version=st.sampled_from([1, 2]),
    body=header_bodies(),
    header_length=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    frames=st.lists(hostile_frames(), max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 5000)),
    flushes=st.lists(st.integers(0, 5000), max_size=4),
    compressed=st.booleans(),
    damage=st.one_of(st.none(), st.tuples(st.integers(0, 5000), st.integers(1, 255))),
)
def test_any_frames_give_frames_or_one_format_error(
    workdir: Path,
    version: int,
    body: bytes,
    header_length: int | None,
    frames: list[Raw],
    cut: int | None,
    flushes: list[int],
    compressed: bool,
    damage: tuple[int, int] | None,
) -> None:
    log = header_bytes(version, body, header_length) + b"".join(frame.encode() for frame in frames)
    blob, _ = compress(log, flushes) if compressed else (log, [])
    if damage is not None and blob:
        where, bits = damage[0] % len(blob), damage[1]
        blob = blob[:where] + bytes([blob[where] ^ bits]) + blob[where + 1 :]
    if cut is not None:
        blob = blob[:cut]
    every_reader(_file(workdir, blob))


# -- well-formed recordings, whole and cut ---------------------------------------------------------------


@dataclass
class Layout:
    """A well-formed log and where its parts end."""

    log: bytes
    header_end: int
    frames: list[Raw]
    ends: list[int] = field(default_factory=list)  # where each frame ends

    @classmethod
    def build(cls, version: int, header: dict[str, Any], frames: list[Raw]) -> Layout:
        log = bytearray(header_bytes(version, json.dumps(header).encode()))
        layout = cls(b"", len(log), frames)
        for frame in frames:
            log += frame.encode()
            layout.ends.append(len(log))
        layout.log = bytes(log)
        return layout

    def expected(self, upto: int) -> list[tuple[str, float, int, str]]:
        return [
            _digest(Frame(f.code.decode(), f.moment, f.payload))
            for f, end in zip(self.frames, self.ends, strict=True)
            if end <= upto
        ]


@FUZZ
@given(version=st.sampled_from([1, 2]), header=HEADERS, frames=st.lists(GOOD_FRAMES, max_size=6))
def test_a_recording_cut_anywhere_reads_to_its_last_whole_frame(
    workdir: Path, version: int, header: dict[str, Any], frames: list[Raw]
) -> None:
    """Uncompressed (version 1, or a version 2 log as it is before compression): every cut point."""
    layout = Layout.build(version, header, frames)
    assert read_whole(_file(workdir, layout.log)) == (header, layout.expected(len(layout.log)), False, None)
    step = max(1, len(layout.log) // 200)  # at most 200 cuts an example; all of them for small logs
    boundaries = {layout.header_end, *layout.ends}
    for cut in [*range(0, len(layout.log), step), *boundaries]:
        seen = read_whole(_file(workdir, layout.log[:cut]))
        if cut < layout.header_end:
            assert "no complete header" in str(seen[3]), (cut, seen)
            continue
        assert seen == (header, layout.expected(cut), cut not in boundaries, None), cut


@FUZZ
@given(
    header=HEADERS,
    frames=st.lists(GOOD_FRAMES, max_size=6),
    flushes=st.lists(st.integers(0, 3000), max_size=4),
    data=st.data(),
)
def test_a_compressed_recording_cut_anywhere_reads_what_it_holds(
    workdir: Path, header: dict[str, Any], frames: list[Raw], flushes: list[int], data: st.DataObject
) -> None:
    """Flushes end between frames (as the broker writes them); the file is cut anywhere: a cut between two
    flushes reads all frames before it, any other cut reads a prefix of the frames and says it was cut."""
    layout = Layout.build(2, header, frames)
    points = [layout.header_end, *layout.ends]
    cuts = sorted({points[n % len(points)] for n in flushes} | {layout.header_end})
    blob, flush_ends = compress(layout.log, cuts)
    log_ends = [c for c in sorted({*cuts, len(layout.log)}) if c > 0]
    everything = layout.expected(len(layout.log))
    assert read_whole(_file(workdir, blob)) == (header, everything, False, None)
    for cut in {*data.draw(st.lists(st.integers(0, len(blob)), max_size=20)), *flush_ends, len(blob) - 1}:
        header_seen, seen, truncated, error = read_whole(_file(workdir, blob[:cut]))
        if cut < flush_ends[0]:
            continue  # the header's flush is incomplete: an error or, if zstd gave it early, a prefix
        assert error is None, (cut, error)
        assert header_seen == header
        assert seen == everything[: len(seen)], cut
        if cut in flush_ends:
            assert seen == layout.expected(log_ends[flush_ends.index(cut)])
            assert not truncated
        else:
            assert truncated, f"cut at {cut} of {len(blob)} bytes, inside a compressed flush, read as whole"


# -- recordings as the broker writes them ----------------------------------------------------------------

EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("data"), st.sampled_from("oei"), payloads(big=True)),
        st.tuples(st.just("meta"), st.dictionaries(st.text(max_size=8), st.text(max_size=30), max_size=3)),
        st.tuples(st.just("resize"), st.integers(1, 10_000), st.integers(1, 10_000)),
        st.tuples(st.just("flush")),
    ),
    max_size=12,
)


def record(path: Path, header: dict[str, Any], events: list[tuple[Any, ...]]) -> list[tuple[str, bytes]]:
    """Write a recording with the broker's Recorder; returns the frames it should read back as."""
    recorder = Recorder.open(path, header)
    expected: list[tuple[str, bytes]] = []
    for event in events:
        if event[0] == "data":
            recorder.data(event[1], event[2])
            chunks = [event[2][n : n + MAX_FRAME] for n in range(0, len(event[2]), MAX_FRAME)] or [b""]
            expected += [(event[1], chunk) for chunk in chunks]
        elif event[0] == "meta":
            recorder.meta(event[1])
            expected.append(("x", json.dumps(event[1], ensure_ascii=False).encode()))
        elif event[0] == "resize":
            recorder.resize(event[1], event[2])
            expected.append(("r", f"{event[1]}x{event[2]}".encode()))
        else:
            recorder.flush()
    recorder.close()
    return expected


def merged_header(header: dict[str, Any], frames: list[Frame]) -> dict[str, Any]:
    """The header with the long values the Recorder moved into its first frames put back."""
    whole = {**header, "jit_ssh": dict(header.get("jit_ssh") or {})}
    for frame in frames:
        meta = frame.json()
        if frame.code == "x" and isinstance(meta, dict) and "header" in meta:
            whole["jit_ssh"].update(meta["header"])
    return whole


@settings(FUZZ, max_examples=40)
@given(
    details=st.dictionaries(
        st.sampled_from(["command", "user", "host", "key_id", "subsystem"]),
        st.text(max_size=30) | st.text(min_size=1020, max_size=3000),
        max_size=4,
    ),
    events=EVENTS,
)
def test_what_the_recorder_writes_reads_back_exactly(
    workdir: Path, details: dict[str, str], events: list[tuple[Any, ...]]
) -> None:
    path = workdir / f"rec-{next(_names)}.cast"
    header = {"version": 2, "width": 80, "height": 24, "jit_ssh": {"started": time.time(), **details}}
    expected = record(path, header, events)
    head, frames, truncated = read_recording(path)
    read = list(frames)
    assert not truncated[0]
    moved = [f for f in read if f.code == "x" and "header" in f.json()]
    assert merged_header(head, moved) == header
    assert [(f.code, f.payload) for f in read[len(moved) : -1]] == expected
    assert read[-1].code == "x"
    assert "end" in read[-1].json()
    times = [f.time for f in read]
    assert times == sorted(times)
    assert times[0] >= 0
    _, followed, _, error = follow_whole(path)
    assert error is None
    assert followed == [_digest(f) for f in read]
    path.unlink()


def test_a_recording_stays_readable_when_the_clock_steps_back(workdir: Path) -> None:
    """The header's start came from the wall clock; NTP (or a resumed VM) may set it back a little later."""
    path = workdir / "clock.cast"
    ahead = time.time() + 5  # as if the clock stepped back 5 s after the session began
    record(path, {"version": 2, "width": 80, "height": 24, "jit_ssh": {"started": ahead}}, [("data", "o", b"hi")])
    _, frames, truncated, error = read_whole(path)
    assert error is None, error
    assert [code for code, *_ in frames] == ["o", "x"]
    assert not truncated


# -- memory: the reader streams ----------------------------------------------------------------------------


@settings(FUZZ, max_examples=25)
@given(
    header=HEADERS,
    runs=st.lists(st.tuples(st.builds(Raw, CODES, GOOD_TIMES, payloads(big=True)), st.integers(1, 16)), max_size=3),
    flushes=st.lists(st.integers(0, 48), max_size=12),
)
def test_the_reader_holds_a_bounded_multiple_of_its_largest_frame(
    workdir: Path, header: dict[str, Any], runs: list[tuple[Raw, int]], flushes: list[int]
) -> None:
    """However well a recording compresses, reading it holds its largest frame a few times, never the file."""
    frames = [frame for frame, times in runs for _ in range(times)] or [Raw(b"o", 0.0, b"")]
    layout = Layout.build(2, header, frames)
    points = [layout.header_end, *layout.ends]
    blob, _ = compress(layout.log, [points[n % len(points)] for n in flushes])
    path = _file(workdir, blob)
    largest = max(len(f.payload) for f in frames)
    bound = SLACK + COPIES * max(largest, layout.header_end)
    assert peak_memory(lambda: read_whole(path)) <= bound
    assert peak_memory(lambda: follow_whole(path)) <= bound
    assert peak_memory(lambda: export_whole(path)) <= SLACK + EXPORT_COPIES * max(largest, layout.header_end)


def test_a_session_of_zeros_reads_in_bounded_memory(workdir: Path) -> None:
    """``head -c 64M /dev/zero | ssh host 'cat > /dev/null'``: the broker records 64 MiB of input that
    compresses about a thousandfold; reading it must not inflate it all at once."""
    path = workdir / "zeros.cast"
    recorder = Recorder.open(path, {"version": 2, "width": 80, "height": 24})
    chunk = bytes(32 * 1024)  # as an SSH channel delivers it
    for _ in range(64 * 1024 * 1024 // len(chunk)):
        recorder.data("i", chunk)
    recorder.close()
    assert path.stat().st_size < 1024 * 1024
    seen: list[int] = []
    assert peak_memory(lambda: seen.append(sum(n for _, _, n, _ in read_whole(path)[1]))) <= SLACK + COPIES * MAX_FRAME
    assert seen == [64 * 1024 * 1024 + len(b'{"end": {}}')]


def test_a_crafted_file_that_inflates_a_thousandfold_reads_in_bounded_memory(workdir: Path) -> None:
    """zstd by hand: each frame of the log is a raw block (its 13-byte head) and a four-byte block that
    inflates to 128 KiB of zeros. 2,000 such frames are 40 KB on disk and 256 MiB read."""
    block = 128 * 1024

    def raw_block(data: bytes, *, last: bool = False) -> bytes:
        return (int(last) | len(data) << 3).to_bytes(3, "little") + data

    zeros = (1 << 1 | block << 3).to_bytes(3, "little") + b"\0"  # a run of one byte (RLE block)
    head = header_bytes(2, b'{"version": 2}')
    # Frame header: the zstd magic, a descriptor without content size or checksum, a 128 KiB window.
    frame = (0xFD2FB528).to_bytes(4, "little") + bytes([0x00, 0x38]) + raw_block(head)
    frame += b"".join(raw_block(_FRAME.pack(b"o", 1.0, block)) + zeros for _ in range(2000)) + raw_block(b"", last=True)
    path = _file(workdir, frame)
    assert path.stat().st_size < 50_000
    seen: list[Seen] = []
    assert peak_memory(lambda: seen.append(read_whole(path))) <= SLACK + COPIES * block
    assert seen[0][1:] == ([("o", 1.0, block, hashlib.sha256(bytes(block)).hexdigest())] * 2000, False, None)


@pytest.mark.parametrize("version", [1, 2])
def test_a_header_or_frame_that_claims_more_than_the_file_holds_costs_the_file(version: int, workdir: Path) -> None:
    """Lengths that lie make the reader wait for bytes that never come: it holds what the file has."""
    body = json.dumps({"version": 2}).encode()
    long_header = header_bytes(2, body, 16 * 1024 * 1024 - 1) if version == 2 else MAGIC + body  # no line end
    claims = [long_header, header_bytes(version, body) + Raw(b"o", 0, b"", 16 * MAX_FRAME).encode()]
    for claim in claims:
        blob = claim + bytes(100_000)
        path = _file(workdir, blob)
        seen = read_whole(path)
        assert seen[3] is not None or seen[2]
        assert peak_memory(lambda path=path: read_whole(path)) <= SLACK + COPIES * len(blob)


def _frames_of(path: Path) -> Iterator[Frame]:
    _, frames, _ = read_recording(path)
    return frames


def test_the_round_trip_helper_sees_a_mismatch(workdir: Path) -> None:
    """Negative control: a frame changed on disk is seen by the comparison the tests above rely on."""
    layout = Layout.build(2, {"version": 2}, [Raw(b"o", 1.0, b"abc")])
    changed = layout.log[:-1] + b"d"
    assert read_whole(_file(workdir, changed))[1] != layout.expected(len(layout.log))
    assert [f.payload for f in _frames_of(_file(workdir, layout.log))] == [b"abc"]


def test_a_crafted_resize_of_a_megabyte_exports_as_a_short_marker(workdir: Path) -> None:
    """Found by hypothesis: a resize frame of 1 MiB of control bytes (only a crafted file holds one: the broker
    records the sizes it checked) was quoted whole in its marker, six characters a byte, and one export of
    13 such frames held 76 MB at once."""
    frames = [Raw(b"r", 1.0, b"\x03" * MAX_FRAME)] * 13
    layout = Layout.build(2, {"version": 2, "width": 80, "height": 24}, frames)
    blob, _ = compress(layout.log, [layout.header_end, *layout.ends])
    path = _file(workdir, blob)
    out = io.StringIO()
    to_asciicast(path, out)
    events = [json.loads(line) for line in out.getvalue().splitlines()[1:]]
    resizes = [data for _, code, data in events if "resize" in data]
    assert len(resizes) == 13
    assert all(code == "m" for _, code, _ in events)
    assert all(len(data) < 400 for data in resizes), max(len(d) for d in resizes)
    assert all(data.endswith(f"({MAX_FRAME} bytes)") for data in resizes)
    assert peak_memory(lambda: export_whole(path)) <= SLACK + 2 * MAX_FRAME


@pytest.mark.parametrize("moment", [1.797693134862316e302, 1e308, 1e10 + 1, float("inf")])
def test_a_time_no_session_can_have_is_one_format_error_for_every_reader(workdir: Path, moment: float) -> None:
    """Found by hypothesis: a frame at 1.8e302 s passed the reader (finite, not negative) and export died
    turning it into microseconds (OverflowError: a traceback, not an error a reviewer can read)."""
    layout = Layout.build(2, {"version": 2, "width": 80, "height": 24}, [Raw(b"o", moment, b"x")])
    blob, _ = compress(layout.log, [layout.header_end])
    path = _file(workdir, blob)
    _, _, _, error = read_whole(path)
    assert error is not None
    assert "damaged frame" in error
    assert export_whole(path) == error


def test_a_crafted_metadata_frame_of_control_bytes_exports_in_bounded_time_and_memory(workdir: Path) -> None:
    """Found by hypothesis while shrinking: a metadata frame of 1 MiB of control bytes was escaped character by
    character into a marker of 6 MiB (a million small strings held at once)."""
    frames = [Raw(b"x", 1.0, b"\x03" * MAX_FRAME)] * 4
    layout = Layout.build(2, {"version": 2, "width": 80, "height": 24}, frames)
    blob, _ = compress(layout.log, [layout.header_end, *layout.ends])
    path = _file(workdir, blob)
    out = io.StringIO()
    to_asciicast(path, out)
    lines = out.getvalue().splitlines()[1:]
    assert lines
    assert max(len(line) for line in lines) < 7 * 64 * 1024
    assert any("the recording keeps them all" in line for line in lines)
    assert peak_memory(lambda: export_whole(path)) <= SLACK + EXPORT_COPIES * MAX_FRAME
