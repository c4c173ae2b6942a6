"""The indexer against whatever a session may print or type (invariants 5 and 6: indexed, never jammed).

Hypothesis builds terminal output from random bytes and from a grammar of what terminals obey (CSI with
any parameters, OSC, DCS, ``ESC #``, charsets, C1 controls, wide and zero-width characters), keystrokes
from a grammar of keys and from random bytes, resizes of any size (or garbage), and metadata of any
shape, and feeds them to the command reconstruction directly and to ``index_recording`` through a
recording on disk:

* nothing but :class:`RecordingFormatError` comes out (``run_index_job``: an ``{"error": ...}``, never an
  exception), and the index files are written;
* the emulated screen stays within the bounds broker/recording/typed_commands.py sets, whatever size was asked for;
* the work is bounded per byte: hypothesis's deadline holds for every example (a few KiB each, with
  resizes to the largest screen), and memory stays within the largest screen and a multiple of the input.
"""

from __future__ import annotations

import json
import os
import string
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jit_ssh.broker.recording import typed_commands as commands
from jit_ssh.broker.recording.format import Frame, RecordingFormatError, encode_frame
from jit_ssh.broker.recording.index import index_recording, input_lines_path, lines_path, run_index_job
from jit_ssh.broker.recording.writer import compress

from tests.unit.broker.test_fuzz_recording import JSON, header_bytes, peak_memory

#: Per example: at most 2 KiB of output an event and 20 events, and a deadline of less than half a
#: millisecond a byte (the emulator needs a few microseconds to a hundred, scrolling the largest screen;
#: pyte's ``ESC # 8`` needed a third of a second).
FUZZ = settings(
    max_examples=60,
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: What the largest screen the emulator allows may hold, and what it may cost beyond, per byte of input.
SCREEN_BYTES = 64 * 1024 * 1024
PER_BYTE = 256

# -- terminal output -------------------------------------------------------------------------------------

NUMBERS = st.one_of(
    st.integers(0, 10),
    st.sampled_from([25, 47, 1000, 1049, 2004, 9999, 65535, 2**31, 10**12]),
    st.integers(0, 10**6),
)
FINALS = "@ABCDEFGHIJKLMPSTXZ`abcdefghilmnpqrstux"


@st.composite
def csi(draw: st.DrawFn) -> bytes:
    private = draw(st.sampled_from(["", "?", ">", "=", "!"]))
    params = ";".join(str(n) for n in draw(st.lists(NUMBERS, max_size=4)))
    intermediate = draw(st.sampled_from(["", "", " ", "$", '"']))
    return f"\x1b[{private}{params}{intermediate}{draw(st.sampled_from(FINALS))}".encode()


def _terminated(opener: str, body: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    ends = st.sampled_from(["\x07", "\x1b\\", "", "\x9c"])
    return st.builds(lambda text, end: (opener + text + end).encode("utf-8", "surrogateescape"), body, ends)


OSC = _terminated(
    "\x1b]",
    st.one_of(
        st.builds(lambda n, text: f"{n};{text}", st.sampled_from([0, 1, 2, 4, 8, 52, 133, 777]), st.text(max_size=60)),
        st.text(max_size=60),
    ),
)
DCS = _terminated("\x1bP", st.text(max_size=60))
ESCAPES = st.one_of(
    st.sampled_from([b"\x1b#8", b"\x1b#3", b"\x1b#6", b"\x1bc", b"\x1b7", b"\x1b8", b"\x1bD", b"\x1bM", b"\x1bE"]),
    st.builds(lambda c, s: b"\x1b" + c + s, st.sampled_from([b"(", b")", b"*", b"+", b"%"]), st.binary(max_size=1)),
    st.sampled_from([b"\x1b[?3h", b"\x1b[?3l", b"\x1b[?5h", b"\x1b[?5l", b"\x1b[?6h", b"\x1b[?7l", b"\x1b[2J"]),
)
C1 = st.sampled_from(["\x9b", "\x9d", "\x90", "\x84", "\x85", "\x8d"]).map(lambda c: c.encode())  # as UTF-8
TEXT = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.text("\u4e00\u0301\u200b\u200d\ufe0f\U0001f600\u202e\t\r\n\b\x07\x0e\x0f a", max_size=40).map(str.encode),
    st.binary(max_size=40),
)
PIECE = st.one_of(csi(), OSC, DCS, ESCAPES, C1, TEXT)
REPEAT = st.one_of(st.integers(1, 5), st.integers(1, 400))
OUTPUT = st.one_of(
    st.lists(st.tuples(PIECE, REPEAT), min_size=1, max_size=8).map(lambda ps: b"".join(p * n for p, n in ps)[:2048]),
    st.binary(max_size=2048),
)

# -- keys --------------------------------------------------------------------------------------------------

KEY = st.one_of(
    st.text(string.printable, min_size=1, max_size=20).map(str.encode),
    st.sampled_from([b"\r", b"\n", b"\x7f", b"\x08", b"\x03", b"\x04", b"\x15", b"\x17", b"\x19", b"\x0b", b"\t"]),
    st.sampled_from([b"\x1b[A", b"\x1b[D", b"\x1b[C", b"\x1bb", b"\x1bf", b"\x1b[3~", b"\x1b[1;5D", b"\x1bO"]),
    st.sampled_from([b"\x1b[200~", b"\x1b[201~", b"\x1b", b"\x1b[", b"\x1b[9999999999"]),
    st.binary(min_size=1, max_size=8),
)
KEYS = st.builds(
    lambda ks, enter: b"".join(k * n for k, n in ks) + enter,
    st.lists(st.tuples(KEY, st.integers(1, 20)), min_size=1, max_size=6),
    st.sampled_from([b"\r", b"\r", b""]),
)
SIZE = st.one_of(st.integers(-5, 200), st.sampled_from([0, 1, 999, 1000, 1001, 10**9, 2**31]))
RESIZE = st.one_of(
    st.builds(lambda c, r: f"{c}x{r}".encode(), SIZE, SIZE),
    st.sampled_from([b"1000x500", b"1001x501", b"x", b"80x", b"0x0", b"-1x5", b"999999999x999999999"]),
    st.binary(max_size=12),
)


def _meta(value: Any) -> bytes:
    return json.dumps(value).encode()


META = st.one_of(
    st.builds(lambda v: _meta({"sftp": v}), st.dictionaries(st.sampled_from(["op", "path", "to", "outcome"]), JSON)),
    st.builds(lambda v: _meta({"env": v}), st.dictionaries(st.text(max_size=8), JSON, max_size=3)),
    st.builds(lambda v: _meta({"end": v}), JSON),
    st.integers(0, 3000).map(lambda n: b'{"end": {"x": ' + b"[" * n + b"]" * n + b"}}"),  # nested as deep as JSON goes
    JSON.map(_meta),
    st.binary(max_size=40),
)


EVENT = st.one_of(
    st.tuples(st.sampled_from(["o", "e"]), OUTPUT),
    st.tuples(st.just("i"), KEYS),
    st.tuples(st.just("r"), RESIZE),
    st.tuples(st.just("x"), META),
)
#: Rounds of output then keys (a shell's prompt, then a line typed), and any other events between them.
ROUND = st.builds(lambda out, keys: [("o", out), ("i", keys)], OUTPUT, KEYS)
SESSIONS = st.lists(st.one_of(ROUND, ROUND, EVENT.map(lambda event: [event])), max_size=10).map(
    lambda rounds: [event for events in rounds for event in events]
)


def frames_of(events: list[tuple[str, bytes]]) -> list[Frame]:
    return [Frame(code, n / 10, payload) for n, (code, payload) in enumerate(events)]


def input_size(events: list[tuple[str, bytes]]) -> int:
    return sum(len(payload) + 13 for _, payload in events)


# -- the command reconstruction -------------------------------------------------------------------------------


def _screen_cells(screen: Any) -> int:
    return sum(len(row) for row in screen.buffer.values())


@settings(FUZZ, max_examples=200)
@given(events=SESSIONS, width=SIZE, height=SIZE)
def test_reconstruction_takes_any_session_and_keeps_the_screen_bounded(
    events: list[tuple[str, bytes]], width: int, height: int
) -> None:
    tracker = commands._Tracker(width, height)
    for frame in frames_of(events):
        tracker.take(frame)
        screen = tracker.screen
        assert 1 <= screen.columns <= commands._MAX_COLUMNS
        assert 1 <= screen.lines <= commands._MAX_LINES
        assert len(screen.buffer) <= screen.lines + 1
        assert _screen_cells(screen) <= (screen.columns + 1) * (screen.lines + 1)
    tracker.settle()
    for line in tracker.lines:
        for command in line.choose():
            assert command.command
            assert all(char.isprintable() or char == "\n" for char in command.command)  # a pasted block


@settings(FUZZ, max_examples=25, deadline=None)
@given(events=SESSIONS, width=SIZE, height=SIZE)
def test_reconstruction_memory_is_the_screen_and_a_multiple_of_the_input(
    events: list[tuple[str, bytes]], width: int, height: int
) -> None:
    frames = [Frame("r", 0.0, b"1000x500"), *frames_of(events)]
    peak = peak_memory(lambda: commands.reconstruct_commands(frames, width=width, height=height))
    assert peak <= SCREEN_BYTES + PER_BYTE * input_size(events)


def test_the_screen_is_bounded_however_large_the_terminal_says_it_is() -> None:
    for size in (b"1000x500", b"1001x501", b"999999999x999999999", b"65536x65536"):
        tracker = commands._Tracker(10**9, 10**9)
        tracker.resize(size)
        assert (tracker.screen.columns, tracker.screen.lines) == (commands._MAX_COLUMNS, commands._MAX_LINES)


# -- index_recording, through a file ------------------------------------------------------------------------

HEADER_SIZES = st.one_of(SIZE, JSON, st.sampled_from([float("nan"), float("inf"), 1e400, -1e400, "80", "x", [80]]))


def write_recording(path: Path, header: dict[str, Any], events: list[tuple[str, bytes]], *, packed: bool) -> None:
    log = bytearray(header_bytes(2, json.dumps(header).encode()))
    for frame in frames_of(events):
        log += encode_frame(frame.code.encode(), frame.time, frame.payload)
    path.write_bytes(compress(log) if packed else bytes(log))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-index")


def _fresh(workdir: Path) -> Path:
    for old in workdir.iterdir():
        old.unlink()
    return workdir / "session.cast"


@settings(FUZZ, max_examples=150)
@given(
    events=SESSIONS,
    width=HEADER_SIZES,
    height=HEADER_SIZES,
    kind=st.sampled_from(["shell", "exec", "sftp", "subsystem"]),
    command=st.one_of(st.none(), st.text(max_size=100)),
    pty=st.booleans(),
    packed=st.booleans(),
)
def test_index_recording_takes_any_session(
    workdir: Path,
    events: list[tuple[str, bytes]],
    width: Any,
    height: Any,
    kind: str,
    command: str | None,
    pty: bool,
    packed: bool,
) -> None:
    path = _fresh(workdir)
    write_recording(path, {"version": 2, "width": width, "height": height}, events, packed=packed)
    try:
        index = index_recording(path, kind=kind, command=command, pty=pty)
    except RecordingFormatError:
        return
    assert lines_path(path).exists()
    assert input_lines_path(path).exists()
    for moment, text, source in index.commands:
        assert isinstance(moment, float)
        assert isinstance(text, str)
        assert isinstance(source, str)
    json.dumps(index.as_dict())
    job = run_index_job({"path": str(path), "kind": kind, "command": command, "pty": pty})
    assert set(job) == {"index"}
    json.dumps(job)


@settings(FUZZ, max_examples=20, deadline=None)
@given(events=SESSIONS, width=SIZE, height=SIZE)
def test_indexing_memory_is_the_screen_and_a_multiple_of_the_input(
    workdir: Path, events: list[tuple[str, bytes]], width: int, height: int
) -> None:
    path = _fresh(workdir)
    write_recording(path, {"version": 2, "width": width, "height": height}, [("r", b"1000x500"), *events], packed=True)
    peak = peak_memory(lambda: index_recording(path, kind="shell", command=None, pty=True))
    assert peak <= SCREEN_BYTES + PER_BYTE * input_size(events)


@FUZZ
@given(
    data=st.binary(max_size=3000),
    prefix=st.sampled_from([b"", b"JITSSH-REC2\n", b"JITSSH-REC1\n{}\n", b"\x28\xb5\x2f\xfd"]),
    pty=st.booleans(),
)
def test_run_index_job_on_garbage_gives_an_error_never_an_exception(
    workdir: Path, data: bytes, prefix: bytes, pty: bool
) -> None:
    path = _fresh(workdir)
    path.write_bytes(prefix + data)
    job = run_index_job({"path": str(path), "kind": "shell", "command": None, "pty": pty})
    assert set(job) in ({"index"}, {"error"})
    if "error" in job:
        assert isinstance(job["error"], str)
        assert "\n" not in job["error"]
    json.dumps(job)


def test_run_index_job_on_what_is_no_recording_gives_an_error(workdir: Path) -> None:
    _fresh(workdir)
    for name in (str(workdir / "missing.cast"), str(workdir), os.devnull):
        job = run_index_job({"path": name, "kind": "shell", "command": None, "pty": True})
        assert set(job) == {"error"}, (name, job)
