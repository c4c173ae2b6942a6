"""Safe replay: what reaches the reviewer's terminal, when, and the keys that pause and quit it.

Times are checked on the computed schedule and with a fake clock, never on the wall clock.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import termios

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jit_ssh.ca import InputError
from jit_ssh.cli.player import SanitizerState, Step, TtyKeys, play, sanitize, sanitize_events, schedule

ESC = "\x1b"


def clean(text: str) -> str:
    return sanitize(text)[0]


# -- what is dropped -------------------------------------------------------------------------------------

DROPPED = {
    "OSC 52 clipboard write, BEL": "\x1b]52;c;ZWNobyBwd25lZA==\x07",
    "OSC 52 clipboard write, ST": "\x1b]52;c;ZWNobyBwd25lZA==\x1b\\",
    "OSC 52 clipboard query": "\x1b]52;c;?\x07",
    "window title": "\x1b]0;pwned\x07",
    "icon and title": "\x1b]2;pwned\x1b\\",
    "hyperlink": "\x1b]8;;https://evil.example/\x1b\\",
    "colour query": "\x1b]11;?\x07",
    "DECRQSS": "\x1bP$qm\x1b\\",
    "XTGETTCAP": "\x1bP+q544e\x1b\\",
    "sixel": "\x1bPq#0;2;0;0;0#1!10~\x1b\\",
    "APC": "\x1b_Gf=100;AAAA\x1b\\",
    "PM": "\x1b^private\x1b\\",
    "SOS": "\x1bXstring\x1b\\",
    "screen/tmux title": "\x1bkname\x1b\\",
    "cursor position report": "\x1b[6n",
    "device status report": "\x1b[5n",
    "DEC device status": "\x1b[?6n",
    "primary device attributes": "\x1b[c",
    "primary device attributes 0": "\x1b[0c",
    "secondary device attributes": "\x1b[>c",
    "tertiary device attributes": "\x1b[=c",
    "window title report": "\x1b[21t",
    "window size report": "\x1b[14t",
    "window resize": "\x1b[8;100;300t",
    "iconify": "\x1b[2t",
    "title stack push": "\x1b[22;0t",
    "DECRQM ANSI": "\x1b[4$p",
    "DECRQM DEC": "\x1b[?2004$p",
    "XTVERSION": "\x1b[>0q",
    "DECREQTPARM": "\x1b[x",
    "DECRQCRA checksum of the screen": "\x1b[1;1;1;1;24;80*y",
    "kitty keyboard query": "\x1b[?u",
    "kitty keyboard push": "\x1b[>1u",
    "XTMODKEYS": "\x1b[>4;2m",
    "XTQMODKEYS": "\x1b[?4m",
    "XTSMGRAPHICS": "\x1b[?1;1S",
    "media copy (printer)": "\x1b[5i",
    "mouse tracking": "\x1b[?1000h",
    "SGR mouse": "\x1b[?1006h",
    "focus reports": "\x1b[?1004h",
    "bracketed paste": "\x1b[?2004h",
    "132 columns": "\x1b[?3h",
    "send/receive mode": "\x1b[12l",
    "DECID": "\x1bZ",
    "S8C1T": "\x1b G",
    "leave UTF-8": "\x1b%@",
    "mouse highlight tracking": "\x1b[1;2;3;4;5T",
    "ENQ answerback": "\x05",
    "bell": "\x07",
    "C1 CSI status report": "\x9b6n",
    "C1 CSI device attributes": "\x9bc",
    "C1 OSC clipboard": "\x9d52;c;ZWNobyBwd25lZA==\x9c",
    "C1 OSC title, BEL": "\x9d0;pwned\x07",
    "C1 DCS": "\x90$qm\x9c",
    "C1 APC": "\x9fdata\x9c",
    "C1 PM": "\x9edata\x9c",
    "C1 SOS": "\x98data\x9c",
    "C1 others": "\x84\x85\x8d\x9c",
}


@pytest.mark.parametrize("sequence", DROPPED.values(), ids=DROPPED.keys())
def test_dropped(sequence: str) -> None:
    assert clean(f"before{sequence}after") == "beforeafter"


# -- what is kept --------------------------------------------------------------------------------------------

KEPT = {
    "text": "hello, world",
    "UTF-8 text": "héllo wörld ✓ 日本語 🙂",
    "newlines and tabs": "a\r\nb\tc\x08d\x0be\x0cf",
    "charset shifts": "\x0eqqq\x0f",
    "SGR": "\x1b[1;31mred\x1b[0m",
    "SGR 256 colours": "\x1b[38;5;208mx\x1b[m",
    "SGR truecolour": "\x1b[38;2;255;128;0;48;2;0;0;0mx",
    "SGR colon subparameters": "\x1b[4:3m\x1b[58:2::255:0:0m",
    "cursor movement": "\x1b[A\x1b[2B\x1b[3C\x1b[4D\x1b[E\x1b[F\x1b[5G\x1b[10;20H\x1b[3;4f\x1b[7d\x1b[`\x1b[a\x1b[e",
    "erase": "\x1b[J\x1b[2J\x1b[K\x1b[1K\x1b[3X\x1b[?2J\x1b[?K",
    "insert and delete": "\x1b[2@\x1b[3P\x1b[L\x1b[2M",
    "scrolling": "\x1b[1;20r\x1b[3S\x1b[2T\x1b[r",
    "save and restore": "\x1b7\x1b8\x1b[s\x1b[u",
    "index, next line, reverse index": "\x1bD\x1bE\x1bM",
    "tab stops": "\x1bH\x1b[g\x1b[3g\x1b[Z\x1b[I",
    "charsets": "\x1b(0lqk\x1b(B\x1b)0\x1b#8\x1b#6",
    "alternate screen": "\x1b[?1049hvim\x1b[?1049l",
    "cursor visibility": "\x1b[?25l\x1b[?25h",
    "cursor style": "\x1b[2 q",
    "autowrap and origin": "\x1b[?7l\x1b[?7h\x1b[?6l",
    "insert mode": "\x1b[4h\x1b[4l",
    "keypad": "\x1b=\x1b>",
    "synchronized output": "\x1b[?2026hx\x1b[?2026l",
    "full reset": "\x1bc",
    "repeat": "x\x1b[5b",
}


@pytest.mark.parametrize("text", KEPT.values(), ids=KEPT.keys())
def test_kept(text: str) -> None:
    assert clean(text) == text


def test_c1_csi_is_kept_as_7_bit() -> None:
    assert clean("\x9b31mred\x9b0m") == "\x1b[31mred\x1b[0m"


def test_only_the_harmless_modes_of_a_mode_change_are_kept() -> None:
    assert clean("\x1b[?1000;1049;1006h") == "\x1b[?1049h"
    assert clean("\x1b[?1000;1006l") == ""
    assert clean("\x1b[4;12;20h") == "\x1b[4h"


def test_unterminated_string_swallows_until_an_escape() -> None:
    assert clean("\x1b]52;c;AAAA then \x1b[31mred") == "\x1b[31mred"
    assert clean("\x1b]0;title\x18visible") == "visible"  # CAN aborts a string, as in a terminal


def test_a_sequence_interrupted_by_another() -> None:
    assert clean("\x1b[12\x1b[31m") == "\x1b[31m"
    assert clean("\x1b[6\x18n") == "n"
    assert clean("\x1b[3\r\n1m") == "\r\n\x1b[31m"  # C0 controls inside a sequence take effect at once


def test_malformed_sequences_are_dropped_to_their_final_byte() -> None:
    assert clean("\x1b[1;2>3mtext") == "text"
    assert clean("\x1b[1$1mtext") == "text"
    assert clean("\x1b[" + "1;" * 500 + "mtext") == "text"
    assert clean("\x1b[1é2mtext") == "text"


# -- streaming, and properties over arbitrary output -----------------------------------------------------------

SAMPLE = "".join([*DROPPED.values(), *KEPT.values()]) + "\x1b[12\x1b[31m\x1b]0;x\x18\x1b[3\r\n1m"


def test_every_split_gives_the_same_output() -> None:
    whole = clean(SAMPLE)
    for cut in range(len(SAMPLE) + 1):
        first, state = sanitize(SAMPLE[:cut])
        second, _ = sanitize(SAMPLE[cut:], state)
        assert first + second == whole, cut


def test_a_split_osc_52_does_not_get_through() -> None:
    events = [(0.0, "ok \x1b"), (0.1, "]52;c;ZWNobyBwd25lZA"), (0.2, "==\x07 \x1b[6"), (0.3, "n done")]
    assert "".join(text for _, text in sanitize_events(events)) == "ok   done"


def test_state_is_a_value() -> None:
    _, state = sanitize("\x1b[1;3")
    assert state == SanitizerState("csi", "1;3")
    assert sanitize("1m", state) == ("\x1b[1;31m", SanitizerState())
    assert sanitize("1m", state) == ("\x1b[1;31m", SanitizerState())  # the same state again, the same result


_FRAGMENTS = st.sampled_from(
    [ESC, "[", "]", "P", "X", "^", "_", "\\", "?", ">", "=", "<", "$", " ", "!", "*", "#", "%", "(", ";", ":",
     "0", "1", "6", "52", "1049", "1000", "m", "n", "c", "t", "h", "l", "p", "q", "u", "y", "H", "J", "K",
     "\x07", "\x05", "\x18", "\x1a", "\x00", "\x7f", "\x9b", "\x9c", "\x9d", "\x90", "\x85", "\r", "\n", "a", "é"]
)  # fmt: skip
_OUTPUT = st.lists(_FRAGMENTS | st.text(max_size=5), max_size=80).map("".join)
_ALLOWED = re.compile(
    r"\x1b\[(?:[0-9;:]*[@A-MPSXZ`abdefgmrsu]|[0-9:]*T|\?[0-9;:]*[JK]|[0-9;]*[hl]|\?[0-9;]*[hl]|[0-9;]* q|[0-9;]*!p)"
    r"|\x1b[78=>DEHMNOc69no|}~]|\x1b[()*+\-./][ -/]?[0-~]|\x1b#[3-8]"
)


@settings(max_examples=500)
@given(_OUTPUT, st.lists(st.integers(0, 400), max_size=5))
def test_arbitrary_output_splits_and_safety(data: str, cuts: list[int]) -> None:
    whole = clean(data)
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    state: SanitizerState | None = None
    pieces = []
    for start, end in itertools.pairwise(bounds):
        piece, state = sanitize(data[start:end], state)
        pieces.append(piece)
    assert "".join(pieces) == whole
    assert clean(whole) == whole  # idempotent
    rest = _ALLOWED.sub("", whole)
    assert ESC not in rest
    assert not re.search(r"[\x00-\x07\x10-\x1f\x7f-\x9f]", rest)
    for mode in re.findall(r"\x1b\[\??([0-9;]*)[hl]", whole):
        assert {int(m) for m in mode.split(";")} <= {4, 5, 6, 7, 12, 25, 47, 1047, 1048, 1049, 2026}


@given(st.text(alphabet=st.characters(min_codepoint=0x20, exclude_categories=("Cc", "Cs"))))
def test_plain_text_is_untouched(text: str) -> None:
    assert clean(text) == text


# -- the schedule ------------------------------------------------------------------------------------------

EVENTS = [(0.5, "a"), (1.0, "b"), (11.0, "c"), (11.5, "d"), (71.5, "e")]


def ats(steps: list[Step]) -> list[float]:
    return [pytest.approx(step.at) for step in steps]


def test_schedule_keeps_the_recorded_timing() -> None:
    steps = list(schedule(EVENTS))
    assert [s.text for s in steps] == ["a", "b", "c", "d", "e"]
    assert ats(steps) == [0.5, 1.0, 11.0, 11.5, 71.5]


def test_speed_divides_the_gaps() -> None:
    assert ats(list(schedule(EVENTS, speed=2))) == [0.25, 0.5, 5.5, 5.75, 35.75]
    assert ats(list(schedule(EVENTS, speed=0.5))) == [1.0, 2.0, 22.0, 23.0, 143.0]


def test_idle_limit_caps_each_gap() -> None:
    assert ats(list(schedule(EVENTS, idle_limit=2))) == [0.5, 1.0, 3.0, 3.5, 5.5]


def test_idle_limit_applies_after_speed() -> None:
    # gaps 0.5 0.5 10 0.5 60 -> /4: 0.125 0.125 2.5 0.125 15 -> capped at 2
    assert ats(list(schedule(EVENTS, speed=4, idle_limit=2))) == [0.125, 0.25, 2.25, 2.375, 4.375]


def test_idle_limit_zero_plays_everything_at_once() -> None:
    assert ats(list(schedule(EVENTS, idle_limit=0))) == [0.0] * 5


def test_start_writes_the_past_at_once_then_keeps_time() -> None:
    steps = list(schedule(EVENTS, start=10.0))
    assert [s.text for s in steps] == ["a", "b", "c", "d", "e"]  # the screen is as it was at 10 s
    assert ats(steps) == [0.0, 0.0, 1.0, 1.5, 61.5]


def test_start_with_speed_and_idle_limit() -> None:
    assert ats(list(schedule(EVENTS, start=10.0, speed=2, idle_limit=5))) == [0.0, 0.0, 0.5, 0.75, 5.75]


def test_start_after_the_end() -> None:
    assert ats(list(schedule(EVENTS, start=1000))) == [0.0] * 5


def test_times_that_go_backwards_never_make_negative_gaps() -> None:
    assert ats(list(schedule([(2.0, "a"), (1.0, "b"), (3.0, "c")]))) == [2.0, 2.0, 3.0]


def test_schedule_is_lazy() -> None:
    def endless() -> object:
        moment = 0.0
        while True:
            moment += 1
            yield moment, "x"

    steps = schedule(endless(), speed=2)  # type: ignore[arg-type]
    assert [next(steps).at for _ in range(3)] == [0.5, 1.0, 1.5]


@pytest.mark.parametrize(
    "options",
    [{"speed": 0}, {"speed": -1}, {"speed": float("nan")}, {"idle_limit": -1}, {"idle_limit": float("nan")},
     {"start": -1}, {"start": float("nan")}],
)  # fmt: skip
def test_schedule_refuses_nonsense(options: dict[str, float]) -> None:
    with pytest.raises(InputError):
        list(schedule(EVENTS, **options))  # type: ignore[arg-type]


@settings(max_examples=200)
@given(
    st.lists(st.floats(0, 1e6), max_size=30).map(sorted),
    st.floats(0.01, 100),
    st.none() | st.floats(0, 100),
    st.floats(0, 1e6),
)
def test_schedule_properties(times: list[float], speed: float, idle_limit: float | None, start: float) -> None:
    steps = list(schedule([(t, str(n)) for n, t in enumerate(times)], speed=speed, idle_limit=idle_limit, start=start))
    assert [s.text for s in steps] == [str(n) for n in range(len(times))]
    gaps = [b.at - a.at for a, b in itertools.pairwise(steps)]
    assert all(gap >= 0 for gap in gaps)
    if idle_limit is not None:
        assert all(gap <= idle_limit + 1e-6 for gap in gaps)
    assert all(s.at == 0 for s, t in zip(steps, times, strict=True) if t < start)
    if steps:
        assert steps[-1].at <= max(0.0, times[-1] - start) / speed + 1e-6 * (1 + times[-1])


# -- playing -------------------------------------------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Recorder(io.StringIO):
    """The terminal: remembers when each write happened."""

    def __init__(self, fake: FakeTime) -> None:
        super().__init__()
        self.fake = fake
        self.writes: list[tuple[float, str]] = []

    def write(self, text: str) -> int:
        self.writes.append((round(self.fake.now - 100.0, 6), text))
        return super().write(text)


class FakeKeys:
    """Keys pressed at given moments; waiting for them advances the fake clock."""

    def __init__(self, fake: FakeTime, presses: list[tuple[float, str]]) -> None:
        self.fake = fake
        self.presses = sorted(presses)
        self.timeouts: list[float | None] = []

    def read(self, timeout: float | None) -> str:
        self.timeouts.append(timeout)
        due = 100.0 + self.presses[0][0] if self.presses else None
        limit = None if timeout is None else self.fake.now + timeout
        if due is not None and (limit is None or due <= limit):
            self.fake.now = max(self.fake.now, due)
            return self.presses.pop(0)[1]
        assert limit is not None, "waited for a key that never comes"
        self.fake.now = limit
        return ""


def test_play_writes_each_step_at_its_time() -> None:
    fake = FakeTime()
    out = Recorder(fake)
    play(schedule(EVENTS, idle_limit=2), out, clock=fake.clock, sleep=fake.sleep)
    assert out.writes == [(0.5, "a"), (1.0, "b"), (3.0, "c"), (3.5, "d"), (5.5, "e")]
    assert out.getvalue() == "abcde"


def test_play_catches_up_instead_of_drifting() -> None:
    fake = FakeTime()

    class Slow(Recorder):
        def write(self, text: str) -> int:
            fake.now += 0.3  # a slow terminal
            return super().write(text)

    out = Slow(fake)
    play([Step(0.0, "a"), Step(0.1, "b"), Step(0.2, "c"), Step(2.0, "d")], out, clock=fake.clock, sleep=fake.sleep)
    assert [at for at, _ in out.writes] == [0.3, 0.6, 0.9, 2.3]
    assert fake.sleeps == [pytest.approx(1.1)]  # no sleeps while behind; then only the rest of the gap


def test_space_pauses_and_resumes_and_time_stands_still_meanwhile() -> None:
    fake = FakeTime()
    out = Recorder(fake)
    keys = FakeKeys(fake, [(1.5, " "), (30.0, "x"), (40.0, " ")])  # paused from 1.5 s to 40 s
    play(schedule(EVENTS, idle_limit=2), out, clock=fake.clock, sleep=fake.sleep, keys=keys)
    assert out.writes == [(0.5, "a"), (1.0, "b"), (41.5, "c"), (42.0, "d"), (44.0, "e")]
    assert None in keys.timeouts  # while paused it waits for a key, however long


def test_q_quits_at_once() -> None:
    fake = FakeTime()
    out = Recorder(fake)
    play(schedule(EVENTS), out, clock=fake.clock, sleep=fake.sleep, keys=FakeKeys(fake, [(5.0, "q")]))
    assert out.getvalue() == "ab"
    assert fake.now - 100.0 == pytest.approx(5.0)


def test_q_quits_while_paused() -> None:
    fake = FakeTime()
    out = Recorder(fake)
    keys = FakeKeys(fake, [(0.7, " "), (9.0, "Q")])
    play(schedule(EVENTS), out, clock=fake.clock, sleep=fake.sleep, keys=keys)
    assert out.getvalue() == "a"


def test_a_hostile_recording_reaches_the_terminal_harmless() -> None:
    recording = [
        (0.1, "$ cat notes\r\n"),
        (0.2, "\x1b]52;c;cm0gLXJmIH4K\x07"),  # clipboard write
        (0.3, "\x1b[6n\x1b[c\x1b]0;you are pwned"),  # status and attribute queries, a title
        (0.4, "\x07\x1b[31mred\x1b[0m\r\n\x1b"),
        (0.5, "P$qm\x1b\\done\r\n"),  # a DCS request split across events
    ]
    fake = FakeTime()
    out = Recorder(fake)
    play(schedule(sanitize_events(recording)), out, clock=fake.clock, sleep=fake.sleep)
    assert out.getvalue() == "$ cat notes\r\n\x1b[31mred\x1b[0m\r\ndone\r\n"


def test_tty_keys_reads_without_echo_and_restores_the_terminal() -> None:
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        with TtyKeys(slave) as keys:
            during = termios.tcgetattr(slave)
            assert not during[3] & termios.ECHO
            assert not during[3] & termios.ICANON
            assert during[3] & termios.ISIG  # Ctrl-C still interrupts
            assert keys.read(0) == ""
            os.write(master, b" ")
            assert keys.read(1.0) == " "
            os.write(master, b"q")
            assert keys.read(None) == "q"
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_tty_keys_gone_means_quit() -> None:
    read_end, write_end = os.pipe()
    os.close(write_end)
    try:
        assert TtyKeys(read_end).read(1.0) == "q"
    finally:
        os.close(read_end)
