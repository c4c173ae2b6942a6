"""A recording's zstd stream decompressed a few blocks at a time, so that reading it holds a bounded amount.

zstd inflates a block of four bytes (a run of one byte) to 128 KiB. A session that sends zeros (``head -c
1G /dev/zero | ssh host 'cat > /dev/null'``) makes a recording that compresses about a thousandfold, and a
decompressor handed 256 KiB of it at once returned close to a gigabyte in one piece, which every review
tool then held, and copied, whole. So the compressed stream is walked here, frame and block headers
(RFC 8878, section 3.1), and handed to the decompressor in pieces that end where blocks end, each of which
inflates to at most about :data:`CHUNK` bytes. The walk costs time in proportion to the compressed bytes.

The walk also knows whether the stream ended inside a frame: a file cut short there is reported as cut
even when what it gave ends exactly between two of the log's own frames (a flush cut in its checksum).
"""

from __future__ import annotations

from collections.abc import Iterator

import zstandard

__all__ = ["CHUNK", "ZstdStream"]

#: Decompressed bytes a piece may give before it is handed on (plus at most one block).
CHUNK = 256 * 1024
_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE = 0x184D2A50  # the low four bits are free
_BLOCK_MAX = 128 * 1024  # the most one compressed block inflates to
_FIELD = {"magic": 4, "size": 4, "descriptor": 1, "block": 3}  # fields the walk reads (little-endian)


class ZstdStream:
    """Incremental decompression of a sequence of zstd frames in pieces of bounded size.

    A stream that is not zstd, or is damaged, raises ``zstandard.ZstdError`` (from the walk or the
    decompressor) as the pieces are taken.
    """

    __slots__ = ("_bound", "_checksum", "_decompressor", "_field", "_kind", "_skip")

    def __init__(self) -> None:
        # The writer's windows are small (zstd level 1: 512 KiB); a larger one is not ours, and would make the
        # decompressor allocate that much outside of any budget.
        self._decompressor = zstandard.ZstdDecompressor(max_window_size=8 * 1024 * 1024).decompressobj(
            read_across_frames=True
        )
        self._kind = "magic"  # the field read next, once ``_skip`` bytes are passed over
        self._field = bytearray()
        self._skip = 0  # bytes of a frame header, a block (and the frame's checksum), or a skippable frame
        self._bound = 0  # what the block being passed over inflates to at most
        self._checksum = 0

    def inside_frame(self) -> bool:
        """The bytes so far end inside a frame (at the end of a file: it was cut short)."""
        return bool(self._skip or self._field or self._kind != "magic")

    def decompress(self, data: bytes) -> Iterator[bytes]:
        """The decompressed bytes of ``data`` (the stream's next bytes), in pieces of about CHUNK at most."""
        start = budget = 0
        for end, bound in self._walk(data):
            budget += bound
            if budget >= CHUNK:
                yield self._decompressor.decompress(data[start:end])
                start, budget = end, 0
        if start < len(data):
            yield self._decompressor.decompress(data[start:])

    def _walk(self, data: bytes) -> Iterator[tuple[int, int]]:
        """Where in ``data`` each block ends, and what it inflates to at most."""
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                take = min(self._skip, end - pos)
                self._skip -= take
                pos += take
                if not self._skip and self._bound:
                    yield pos, self._bound
                    self._bound = 0
                continue
            size = _FIELD[self._kind]
            if not self._field and end - pos >= size:  # the usual case: the whole field is here
                pos += size
                self._read_field(int.from_bytes(data[pos - size : pos], "little"))
                continue
            need = size - len(self._field)
            self._field += data[pos : pos + need]
            pos += min(need, end - pos)
            if len(self._field) == size:
                value = int.from_bytes(self._field, "little")
                self._field.clear()
                self._read_field(value)

    def _read_field(self, value: int) -> None:
        kind = self._kind
        if kind == "magic":
            if value == _ZSTD_MAGIC:
                self._kind = "descriptor"
            elif value & ~0xF == _SKIPPABLE:
                self._kind = "size"
            else:
                raise zstandard.ZstdError(f"no zstd frame here (magic {value:#010x})")
        elif kind == "size":  # of a skippable frame's content
            self._skip, self._kind = value, "magic"
        elif kind == "descriptor":  # then the window, dictionary id and content size fields, as it says
            single = value >> 5 & 1
            self._checksum = 4 if value & 4 else 0
            self._skip = (1 - single) + (0, 1, 2, 4)[value & 3] + (single, 2, 4, 8)[value >> 6]
            self._kind = "block"
        else:  # a block: last flag, type (raw, a run of one byte, compressed, reserved) and size
            last, kind_bits, size = value & 1, value >> 1 & 3, value >> 3
            if kind_bits == 3:
                raise zstandard.ZstdError("a zstd block of the reserved type")
            content = 1 if kind_bits == 1 else size
            self._bound = _BLOCK_MAX if kind_bits == 2 else size
            self._skip = content + (self._checksum if last else 0)
            self._kind = "magic" if last else "block"
            if not self._skip:
                self._bound = 0  # an empty raw block
