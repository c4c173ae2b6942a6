"""jit_ssh.broker.recording: session recordings, written, read, exported and indexed (DESIGN.md, "Recording").

The format and its one reader (:mod:`.format`), the writer (:mod:`.recorder` on :mod:`.writer`'s thread),
asciicast export (:mod:`.asciicast`). The index (:mod:`.index`, :mod:`.typed_commands`) is imported from
its own modules: it runs in budgeted processes and loads the terminal emulator, which nothing else needs.
"""

from .asciicast import AsciicastWriter, CastFormat, to_asciicast
from .format import Frame, FrameParser, RecordingFormatError, TextStream, follow_frames, read_recording
from .recorder import FULL, Recorder, RecordingError

__all__ = [
    "FULL",
    "AsciicastWriter",
    "CastFormat",
    "Frame",
    "FrameParser",
    "Recorder",
    "RecordingError",
    "RecordingFormatError",
    "TextStream",
    "follow_frames",
    "read_recording",
    "to_asciicast",
]
