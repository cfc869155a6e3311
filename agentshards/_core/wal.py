"""A shard's WAL as Litestream reads it: commits in the file that SQLite's wal-index does not publish.

A writer commits by appending its frames to the ``-wal`` file and only then publishing the new end in
the wal-index (the ``-shm`` header). A writer killed between the two leaves a complete, checksummed
commit in the file that no connection sees: while another process keeps the shard open (Litestream
always does), SQLite has no reason to rebuild the index, and the next writer overwrites those frames.
Litestream reads the file, not the index, so it may already have shipped that commit; the overwrite
then either stalls its replication of the shard ("wal overwritten by another process", followed by a
snapshot it cannot build while the pages live only in the WAL) or leaves a replica that differs from
the shard. SQLite itself would keep such a commit had no connection been open (recovery reads every
valid frame), so the cure is to let it: close every connection, then open one, which rebuilds the
index from the file (``_replication.replication.Replication.adopt_torn_commit``).

This module only reads: the two files' formats are SQLite's documented WAL and wal-index layouts.
"""

from __future__ import annotations

import struct
from pathlib import Path

WAL_HEADER_SIZE = 32
FRAME_HEADER_SIZE = 24
_MAGIC_LE, _MAGIC_BE = 0x377F0682, 0x377F0683  # the low bit names the checksums' byte order
_INDEX_HEADER = struct.Struct("=IIIBBHIIIIIIII")  # WalIndexHdr: 48 bytes
_INDEX_COPY = 48
_MASK = 0xFFFFFFFF


def unpublished_frames(db_path: Path) -> int:
    """How many frames past the wal-index's last published commit form whole commits in the WAL file.

    0 when there is no WAL, no wal-index, a wal-index SQLite would rebuild by itself anyway (torn or not
    initialised) or one of another WAL generation. Reads the published end and its running checksum from
    the wal-index, then checks the frames after it the way SQLite's recovery does (salts, cumulative
    checksums) and counts up to the last commit frame.
    """
    wal, shm = Path(f"{db_path}-wal"), Path(f"{db_path}-shm")
    try:
        index = shm.read_bytes()[: 2 * _INDEX_COPY]
        with open(wal, "rb") as f:
            header = f.read(WAL_HEADER_SIZE)
            if len(index) < 2 * _INDEX_COPY or len(header) < WAL_HEADER_SIZE:
                return 0
            if index[:_INDEX_COPY] != index[_INDEX_COPY:]:  # torn: the next reader recovers by itself
                return 0
            (_version, _unused, _change, is_init, _big_end, size_code, mx_frame, _n_page, ck1, ck2,
             _salt1, _salt2, _hck1, _hck2) = _INDEX_HEADER.unpack_from(index)
            magic, _format, page_size = struct.unpack_from(">III", header)
            if not is_init or magic not in (_MAGIC_LE, _MAGIC_BE) or index[32:40] != header[16:24]:
                return 0
            if page_size != (size_code & 0xFF00) | ((size_code & 0x0001) << 16):
                return 0
            order = "<" if magic == _MAGIC_LE else ">"
            checksum = (ck1, ck2) if mx_frame else struct.unpack_from(">II", header, 24)
            frame_size = FRAME_HEADER_SIZE + page_size
            f.seek(WAL_HEADER_SIZE + mx_frame * frame_size)
            read = last_commit = 0
            while True:
                frame = f.read(frame_size)
                if len(frame) < frame_size or frame[8:16] != header[16:24]:
                    return last_commit
                checksum = _checksum(frame[FRAME_HEADER_SIZE:], order, _checksum(frame[:8], order, checksum))
                if checksum != struct.unpack_from(">II", frame, 16):
                    return last_commit
                read += 1
                if struct.unpack_from(">I", frame, 4)[0]:  # a commit frame names the database size
                    last_commit = read
    except FileNotFoundError:
        return 0


def _checksum(data: bytes, order: str, seed: tuple[int, int]) -> tuple[int, int]:
    """SQLite's WAL checksum over ``data`` (a multiple of 8 bytes), continued from ``seed``: a frame's runs
    over the first 8 bytes of its header, then its page, starting from the previous frame's."""
    s0, s1 = seed
    words = struct.unpack(f"{order}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & _MASK
        s1 = (s1 + words[i + 1] + s0) & _MASK
    return s0, s1
