"""The boot archive (initrd): every program, read-only in init at ``abi.INITRD_VA``.

Layout (little-endian)::

    u64 magic  (abi.INITRD_MAGIC, "XOMBINRD")
    u64 count
    count x { char name[32] (NUL-padded, NUL-terminated: at most 31 bytes of ASCII);
              u64 offset (from the archive start); u64 size }
    file data, each file 16-byte aligned, in entry order

The C side (libOS) parses the same layout through ``XOMB_INITRD_*``.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable, Mapping

from . import abi

HEADER = struct.Struct("<QQ")
ENTRY = struct.Struct(f"<{abi.INITRD_NAME}sQQ")
ALIGN = 16
MAX_FILES = 4096


class InitrdError(ValueError):
    """A bad name when packing, or a corrupt archive when parsing."""


@dataclass(frozen=True)
class InitrdEntry:
    name: str
    offset: int
    size: int


def check_name(name: str) -> bytes:
    """The encoded name, or InitrdError saying what is wrong with it."""
    if not isinstance(name, str) or not name:
        raise InitrdError(f"initrd name {name!r}: must be a non-empty string")
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        raise InitrdError(f"initrd name {name!r}: not ASCII") from None
    if len(raw) >= abi.INITRD_NAME:
        raise InitrdError(f"initrd name {name!r}: {len(raw)} bytes, at most "
                          f"{abi.INITRD_NAME - 1} allowed")
    if any(c < 0x21 or c > 0x7E for c in raw):
        raise InitrdError(f"initrd name {name!r}: only printable ASCII without spaces")
    return raw


def _align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def pack(files: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> bytes:
    """Build an archive from ``{name: data}`` (order kept)."""
    items = list(files.items() if isinstance(files, Mapping) else files)
    if len(items) > MAX_FILES:
        raise InitrdError(f"{len(items)} files: at most {MAX_FILES}")
    seen: set[str] = set()
    names = []
    for name, _ in items:
        raw = check_name(name)
        if name in seen:
            raise InitrdError(f"initrd name {name!r}: duplicate")
        seen.add(name)
        names.append(raw)
    off = _align(HEADER.size + ENTRY.size * len(items))
    table = bytearray(HEADER.pack(abi.INITRD_MAGIC, len(items)))
    for raw, (_, data) in zip(names, items):
        table += ENTRY.pack(raw, off, len(data))
        off = _align(off + len(data))
    out = bytearray(table)
    for _, data in items:
        out += bytes(_align(len(out)) - len(out))
        out += data
    return bytes(out)


def entries(archive: bytes | bytearray | memoryview) -> list[InitrdEntry]:
    """Parse and validate the table; InitrdError with the reason if corrupt."""
    buf = memoryview(archive).cast("B")
    n = len(buf)
    if n < HEADER.size:
        raise InitrdError(f"initrd: {n} bytes, shorter than its {HEADER.size}-byte header")
    magic, count = HEADER.unpack_from(buf, 0)
    if magic != abi.INITRD_MAGIC:
        raise InitrdError(f"initrd: bad magic {magic:#018x} (expected "
                          f"{abi.INITRD_MAGIC:#018x})")
    if count > MAX_FILES:
        raise InitrdError(f"initrd: count {count} exceeds {MAX_FILES}")
    end_table = HEADER.size + count * ENTRY.size
    if end_table > n:
        raise InitrdError(f"initrd: table of {count} entries needs {end_table} bytes, "
                          f"archive has {n}")
    out: list[InitrdEntry] = []
    seen: set[str] = set()
    for i in range(count):
        raw, off, size = ENTRY.unpack_from(buf, HEADER.size + i * ENTRY.size)
        nul = raw.find(b"\0")
        if nul < 0:
            raise InitrdError(f"initrd entry {i}: name not NUL-terminated")
        if raw[nul:].strip(b"\0"):
            raise InitrdError(f"initrd entry {i}: garbage after the name's NUL")
        try:
            name = raw[:nul].decode("ascii")
        except UnicodeDecodeError:
            raise InitrdError(f"initrd entry {i}: name is not ASCII") from None
        try:
            check_name(name)
        except InitrdError as e:
            raise InitrdError(f"initrd entry {i}: {e}") from None
        if name in seen:
            raise InitrdError(f"initrd entry {i}: duplicate name {name!r}")
        seen.add(name)
        if off % ALIGN:
            raise InitrdError(f"initrd entry {i} ({name}): offset {off:#x} not "
                              f"{ALIGN}-byte aligned")
        if off < end_table:
            raise InitrdError(f"initrd entry {i} ({name}): offset {off:#x} inside the table")
        if off + size > n:
            raise InitrdError(f"initrd entry {i} ({name}): data {off:#x}+{size:#x} runs past "
                              f"the end of the archive ({n:#x})")
        out.append(InitrdEntry(name, off, size))
    return out


def parse(archive: bytes | bytearray | memoryview) -> dict[str, bytes]:
    """``{name: data}`` of a valid archive (InitrdError otherwise)."""
    buf = memoryview(archive).cast("B")
    return {e.name: bytes(buf[e.offset:e.offset + e.size]) for e in entries(buf)}
