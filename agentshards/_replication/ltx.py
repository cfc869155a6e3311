"""LTX files: the format Litestream 0.5 stores a replica in, read here so a restore needs no process.

Why read them ourselves: ``litestream restore`` is one Go process per agent, and on a 2-core machine its
start-up and S3 client cost 56-83 ms of CPU each, which made the restore of a 1,000-agent fleet take
28-41 s of CPU before any agent ran (README, Performance). Reading the same files in this process costs
one GET per file in the restore plan and a few milliseconds of decoding.

What is read, as Litestream 0.5.17 writes it (checked against its own restore byte for byte in
``tests/test_ltx.py``):

- keys ``<agent prefix>/ltx/<level>/<min txid>-<max txid>.ltx`` (file replicas) or
  ``<agent prefix>/<level as 4 hex digits>/...`` (S3), TXIDs as 16 hex digits; level 9 holds snapshots,
  levels 0-8 the transactions and their compactions;
- a 100-byte header (``LTX1``, flags, page size, commit size in pages, min/max TXID, ...), page frames
  (page number, frame flags, payload size, an LZ4 block of one page), a 6-byte zero frame, a page index
  and its size, and a 16-byte trailer whose last 8 bytes are a CRC-64 (Go's ISO table, top bit set) of
  the file as if every payload were its decompressed page.

Anything else (another magic, header or frame flags this module does not know, any object under the
agent's prefix whose key is not one of the above, such as a v0.3 ``generations/`` replica or a layout of
a later Litestream) raises ``UnsupportedLtx`` and the caller falls back to the ``litestream`` binary: an
unknown format is never guessed at, and an unknown object is never skipped (it may hold the newest
state). Damage in a known format (checksum, sizes, a gap between TXIDs, a missing page) raises
``DamagedLtx``.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

VERIFIED_LITESTREAM = (0, 5, 17)
"""The Litestream release whose replicas this reader was checked against, byte for byte, by its own restore
(``tests/test_ltx.py``). A later release may write what this module reads differently without changing
anything it checks, so a newer installed ``litestream`` is warned about (``litestream.warn_if_newer``)."""

SNAPSHOT_LEVEL = 9
"""Litestream keeps full snapshots at this level; a restore starts from the newest one."""

_MAGIC = b"LTX1"
_HEADER = struct.Struct(">4sIIIQQqQqqIIQ")  # the first 80 of the header's 100 bytes; the rest is reserved
_HEADER_SIZE = 100
_FRAME = struct.Struct(">IHI")  # page number, frame flags, payload size
_END = struct.Struct(">IH")  # the frame that ends the pages: number 0, flags 0
_TRAILER_SIZE = 16
_FLAG_NO_CHECKSUM = 1 << 1  # the only header flag Litestream 0.5 sets: no rolling database checksum
_FRAME_LZ4 = 1  # payload is one LZ4 block holding one page
_CHECKSUM_FLAG = 1 << 63
_PENDING_BYTE = 0x40000000  # SQLite never stores a page at this offset (the lock page)
_KEY = re.compile(r"(?:ltx/(\d)|([0-9a-f]{4}))/([0-9a-f]{16})-([0-9a-f]{16})\.ltx")


class LtxError(Exception):
    """Base of this module's errors; callers turn them into agentshards errors with the agent's id."""


class UnsupportedLtx(LtxError):
    """A replica in a format this module does not read: restore it with the ``litestream`` binary."""


class UnknownObjects(UnsupportedLtx):
    """Objects under the agent's replica prefix whose keys are not LTX files of the known layout.

    ``reached`` is the highest TXID of the files that did parse (0 for none): another reader's restore is
    only worth more than this one's if it gets past it, which proves it read something here unknown.
    """

    def __init__(self, keys: list[str], reached: int) -> None:
        self.keys = keys
        self.reached = reached
        shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
        super().__init__(f"{len(keys)} objects under the replica are not LTX files this version reads: {shown}")


class DamagedLtx(LtxError):
    """A replica file in the known format whose content does not hold together."""


@dataclass(frozen=True, order=True)
class LtxFile:
    """One LTX object of a replica, known from its key alone."""

    level: int
    min_txid: int
    max_txid: int
    key: str


def parse_key(key: str, root: str) -> LtxFile | None:
    """The file a key under an agent's replica ``root`` names, or None for any other key.

    Litestream's file replicas put level N under ``ltx/N/``, its object-store replicas under ``%04x``.
    """
    match = _KEY.fullmatch(key[len(root):]) if key.startswith(root) else None
    if match is None:
        return None
    level = int(match[1]) if match[1] is not None else int(match[2], 16)
    if level > SNAPSHOT_LEVEL:
        return None
    return LtxFile(level, int(match[3], 16), int(match[4], 16), key)


def parse_listing(keys: Iterable[str], root: str) -> list[LtxFile]:
    """Every key listed under an agent's ``root`` as an LTX file; raise ``UnknownObjects`` if any is not one.

    Skipping what does not parse would restore an older state, or none, when the newest objects are in a
    layout this module does not know.
    """
    files: list[LtxFile] = []
    unknown: list[str] = []
    for key in keys:
        file = parse_key(key, root)
        if file is None:
            unknown.append(key)
        else:
            files.append(file)
    if unknown:
        raise UnknownObjects(sorted(unknown), max((f.max_txid for f in files), default=0))
    return files


def restore_plan(files: Iterable[LtxFile]) -> list[LtxFile]:
    """The files whose pages, applied in order, give the newest state, as Litestream chooses them.

    The newest snapshot (level 9) first; then, repeatedly, of the files at levels 0-8 that start at or
    before the next TXID, the one that reaches furthest (ties: the one starting earlier, then the higher
    level, which is the compaction of the others). A file starting after the next TXID once nothing
    else extends the range is a gap: an error, not a silently older restore.
    """
    files = list(files)
    snapshots = sorted((f for f in files if f.level == SNAPSHOT_LEVEL), key=lambda f: (f.max_txid, f.min_txid))
    plan = [snapshots[-1]] if snapshots else []
    reached = plan[-1].max_txid if plan else 0
    rest = [f for f in files if f.level < SNAPSHOT_LEVEL]
    while True:
        usable = [f for f in rest if f.min_txid <= reached + 1 and f.max_txid > reached]
        if not usable:
            break
        best = max(usable, key=lambda f: (f.max_txid, -f.min_txid, f.level))
        plan.append(best)
        reached = best.max_txid
    if not plan and files:
        raise DamagedLtx(f"no snapshot to start from: the oldest of {len(files)} files starts at TXID "
                         f"{min(f.min_txid for f in files):x}")
    later = [f for f in rest if f.min_txid > reached + 1]
    if later:
        first = min(later, key=lambda f: f.min_txid)
        raise DamagedLtx(f"non-contiguous LTX files: the replica reaches TXID {reached:x} but the next file "
                         f"({first.key}) starts at {first.min_txid:x}")
    if plan and plan[0].min_txid != 1:
        raise DamagedLtx(f"no snapshot to start from: the oldest usable file {plan[0].key} starts at "
                         f"TXID {plan[0].min_txid:x}")
    return plan


@dataclass(frozen=True)
class Decoded:
    """One LTX file's header fields and pages (page number -> page bytes)."""

    page_size: int
    commit: int
    min_txid: int
    max_txid: int
    pages: dict[int, bytes]


def decode(data: bytes, file: LtxFile) -> Decoded:
    """Parse and verify one LTX file: header, every frame, the layout after the frames, the checksum."""
    import fastcrc
    import lz4.block

    if data[:4] != _MAGIC:
        raise UnsupportedLtx(f"{file.key} is not an LTX1 file (starts {data[:4]!r})")
    if len(data) < _HEADER_SIZE + _END.size + 8 + _TRAILER_SIZE:
        raise DamagedLtx(f"{file.key}: truncated ({len(data)} bytes)")
    (_, flags, page_size, commit, min_txid, max_txid, _, _, _, _, _, _, _) = _HEADER.unpack_from(data)
    if flags & ~_FLAG_NO_CHECKSUM:
        raise UnsupportedLtx(f"{file.key} has header flags {flags:#x} this version does not read")
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        raise DamagedLtx(f"{file.key}: invalid page size {page_size}")
    if (min_txid, max_txid) != (file.min_txid, file.max_txid):
        raise DamagedLtx(f"{file.key}: its header says TXIDs {min_txid:x}-{max_txid:x}")
    lock_page = _PENDING_BYTE // page_size + 1
    crc = fastcrc.crc64.go_iso(data[:_HEADER_SIZE])
    pages: dict[int, bytes] = {}
    pos = _HEADER_SIZE
    while True:
        if pos + _FRAME.size > len(data):
            raise DamagedLtx(f"{file.key}: truncated at byte {pos}")
        pgno, frame_flags, size = _FRAME.unpack_from(data, pos)
        if pgno == 0:  # the end of the frames: a page number and flags of zero, no size field
            if frame_flags:
                raise DamagedLtx(f"{file.key}: end frame with flags {frame_flags:#x}")
            crc = fastcrc.crc64.go_iso(data[pos:pos + _END.size], crc)
            pos += _END.size
            break
        crc = fastcrc.crc64.go_iso(data[pos:pos + _FRAME.size], crc)
        pos += _FRAME.size
        if frame_flags != _FRAME_LZ4:
            raise UnsupportedLtx(f"{file.key}: page {pgno} has frame flags {frame_flags:#x}")
        if pgno > commit or pgno == lock_page or pgno in pages or pos + size > len(data):
            raise DamagedLtx(f"{file.key}: bad frame for page {pgno} (commit {commit}, {size} bytes at {pos})")
        try:
            page = lz4.block.decompress(data[pos:pos + size], uncompressed_size=page_size)
        except lz4.block.LZ4BlockError as exc:
            raise DamagedLtx(f"{file.key}: page {pgno} does not decompress: {exc}") from None
        if len(page) != page_size:
            raise DamagedLtx(f"{file.key}: page {pgno} decompresses to {len(page)} bytes, not {page_size}")
        crc = fastcrc.crc64.go_iso(page, crc)
        pages[pgno] = page
        pos += size
    index_end = len(data) - _TRAILER_SIZE - 8
    (index_size,) = struct.unpack_from(">Q", data, index_end)
    if index_end - pos != index_size:
        raise DamagedLtx(f"{file.key}: page index of {index_size} bytes does not fit the {index_end - pos} left")
    crc = fastcrc.crc64.go_iso(data[pos:-8], crc)
    (stored,) = struct.unpack_from(">Q", data, len(data) - 8)
    if crc | _CHECKSUM_FLAG != stored:
        raise DamagedLtx(f"{file.key}: file checksum mismatch ({crc | _CHECKSUM_FLAG:#x} != {stored:#x})")
    return Decoded(page_size, commit, min_txid, max_txid, pages)


def write_database(files: Iterable[Decoded], fd: int) -> int:
    """Apply decoded files in plan order to an empty file; return its size in pages.

    Later files' pages replace earlier ones; the last file's commit size is the database's size. Every
    page up to it must have been written by some file (the snapshot holds them all), else the result is
    refused rather than left with a hole of zeros.
    """
    written: set[int] = set()
    last: Decoded | None = None
    for part in files:
        if last is not None and part.page_size != last.page_size:
            raise DamagedLtx(f"page size changes from {last.page_size} to {part.page_size} at TXID "
                             f"{part.min_txid:x}")
        for pgno, page in part.pages.items():
            os.pwrite(fd, page, (pgno - 1) * part.page_size)
            written.add(pgno)
        last = part
    if last is None:
        raise DamagedLtx("nothing to restore")
    lock_page = _PENDING_BYTE // last.page_size + 1
    missing = [p for p in range(1, last.commit + 1) if p not in written and p != lock_page]
    if missing:
        raise DamagedLtx(f"{len(missing)} pages (first {missing[0]}) are in no file of the restore plan")
    os.ftruncate(fd, last.commit * last.page_size)
    return last.commit
