"""Indexing a recording for review: output without line ends is indexed in bounded pieces, and a damaged
header or metadata record of any shape is indexed as well as it can be, never an exception."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from jit_ssh.broker.recording.index import _MAX_LINE, index_recording, lines_path, run_index_job
from jit_ssh.broker.recording.recorder import Recorder


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


def _recording(path: Path, header: dict[str, Any], events: list[tuple[str, Any]]) -> Path:
    recorder = Recorder.open(path, {"version": 2, "timestamp": time.time(), **header})
    for stream, value in events:
        if stream == "x":
            recorder.meta(value)
        else:
            recorder.data(stream, value)
    recorder.close()
    return path


@pytest.mark.parametrize("size", [[80], {"w": 80}, 1e400, "eighty", None], ids=repr)
def test_a_header_size_of_the_wrong_type_is_indexed_at_a_default_size(tmp_path: Path, size: Any) -> None:
    """A list or infinity as the width raised TypeError or OverflowError out of the index (the fuzz test
    of the indexer found it); "eighty" lost the commands read off the screen."""
    typed = [("o", b"$ "), ("i", b"echo hi\r"), ("o", b"echo hi\r\nhi\r\n$ ")]
    path = _recording(tmp_path / "s.cast", {"width": size, "height": 24}, typed)
    index = index_recording(path, kind="shell", command=None, pty=True)
    assert ("echo hi", "screen") in [(text, source) for _, text, source in index.commands]


def test_file_operations_of_any_shape_are_indexed(tmp_path: Path) -> None:
    """A damaged sftp record whose op is a list made the review list raise (unhashable), losing the index."""
    ops = [{"op": ["stat"], "path": "/a"}, {"op": {"k": 1}, "path": 5, "outcome": "ok"}, {"op": "remove", "path": "/b"}]
    path = _recording(tmp_path / "s.cast", {}, [("x", {"sftp": op}) for op in ops])
    index = index_recording(path, kind="sftp", command=None, pty=False)
    assert [op["op"] for op in index.transfers] == [["stat"], {"k": 1}, "remove"]


def test_metadata_nested_as_deep_as_json_goes_is_indexed(tmp_path: Path) -> None:
    """dataclasses.asdict copies by recursion: a record nested 600 deep overflowed the stack in the
    indexing process, and the session lost its whole index."""
    deep = "[" * 600 + "]" * 600
    path = _recording(tmp_path / "s.cast", {}, [("x", {"sftp": {"op": "stat", "x": json.loads(deep)}})])
    job = run_index_job({"path": str(path), "kind": "sftp", "command": None, "pty": False})
    assert set(job) == {"index"}
    assert json.dumps(job["index"]["transfers"][0]["x"]) == deep
