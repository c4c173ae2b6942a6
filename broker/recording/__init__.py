"""jit_ssh.broker.recording: session recordings, written, read, exported and indexed (DESIGN.md, "Recording").

The format and its one reader (:mod:`.format`), the writer (:mod:`.recorder` on :mod:`.writer`'s thread),
asciicast export (:mod:`.asciicast`), and where recordings are kept (:mod:`.store`). The index
(:mod:`.index`, :mod:`.typed_commands`) is imported from its own modules: it runs in budgeted processes and
loads the terminal emulator, which nothing else needs.
"""

from .asciicast import AsciicastWriter, CastFormat, to_asciicast
from .format import (
    Frame,
    FrameParser,
    RecordingFormatError,
    RecordingSource,
    TextStream,
    follow_frames,
    read_recording,
)
from .recorder import FULL, Recorder, RecordingError
from .store import LocalRecordingStore, NewRecording, RecordingReferenceError, RecordingStore, StoredRecording

__all__ = [
    "FULL",
    "AsciicastWriter",
    "CastFormat",
    "Frame",
    "FrameParser",
    "LocalRecordingStore",
    "NewRecording",
    "Recorder",
    "RecordingError",
    "RecordingFormatError",
    "RecordingReferenceError",
    "RecordingSource",
    "RecordingStore",
    "StoredRecording",
    "TextStream",
    "follow_frames",
    "read_recording",
    "to_asciicast",
]
