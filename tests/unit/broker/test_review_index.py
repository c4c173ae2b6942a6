"""Indexing a recording for review: output without line ends is indexed in bounded pieces."""

from __future__ import annotations

import time
from pathlib import Path

from jit_ssh.broker.index import _MAX_LINE, index_recording, lines_path
from jit_ssh.broker.recorder import Recorder


def test_output_without_line_ends_is_indexed_in_bounded_lines(tmp_path: Path) -> None:
    path = tmp_path / "s.jsr"
    recorder = Recorder.open(path, {"version": 2, "width": 80, "height": 24, "timestamp": time.time()})
    for index in range(2048):  # 8 MiB, one "line"; distinct chunks so that deduplication does not hide it
        recorder.data("o", bytes([97 + index % 26]) * 4096)
    recorder.data("o", b"\r\nTHE-END\r\n")
    recorder.close()
    index_recording(path, kind="shell", command=None, pty=True)
    lines = lines_path(path).read_text(encoding="utf-8").splitlines()
    assert "THE-END" in lines
    assert max(len(line) for line in lines) <= _MAX_LINE
    assert len(lines) > 1  # the long line was cut, not dropped or kept whole
