"""XOFS: the libOS file system, host side (`xomb-vmm mkfs`, `xomb-vmm fs`).

The same on-disk format as libos/lib/fs.c, from the constants in vmm/abi.py
(docs/DEVICES.md explains it).  In short, per namespace (4 KiB blocks):

    0, 1        superblock pair {magic, generation, nblocks, table, table_crc, crc}
    2 .. 5      inode table A  (256 inodes x 64 bytes)
    6 .. 9      inode table B
    10 ..       data: every file is one contiguous extent

A change never overwrites anything the committed state uses: new file data goes to
free blocks, the new inode table goes to the table slot the committed superblock does
*not* point at, then flush, then the superblock with generation + 1 goes to the other
superblock slot, then flush.  Mount picks the valid superblock (crc) with the higher
generation whose table matches its crc.  A crash at any point leaves the last
flushed commit intact (copy-on-write, shadow-paged metadata).

The image: block 0 is a label {LABEL_MAGIC, count, (start, nblocks) x count}; each
namespace is one disk VF.
"""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass

from vmm import abi

BS = abi.DISK_BLOCK
_SB = struct.Struct("<QQQII")            # magic gen nblocks table table_crc (+ u32 crc)
_INODE = struct.Struct("<IIQIIQ32s")
assert _INODE.size == abi.FS_INODE_SIZE
TABLE_BYTES = abi.FS_INODES * abi.FS_INODE_SIZE


class FsError(Exception):
    """A file-system error (one-line message)."""


def crc32(b: bytes) -> int:
    return zlib.crc32(b) & 0xFFFF_FFFF


@dataclass
class Inode:
    type: int = abi.FS_FREE
    parent: int = 0
    size: int = 0
    start: int = 0
    nblocks: int = 0
    gen: int = 0
    name: str = ""

    def pack(self) -> bytes:
        return _INODE.pack(self.type, self.parent, self.size, self.start, self.nblocks,
                           self.gen, self.name.encode()[:abi.FS_NAME_MAX])

    @classmethod
    def unpack(cls, b: bytes, off: int) -> "Inode":
        t, p, size, start, n, gen, name = _INODE.unpack_from(b, off)
        return cls(t, p, size, start, n, gen, name.split(b"\0", 1)[0].decode(errors="replace"))


def pack_sb(gen: int, nblocks: int, table: int, table_crc: int) -> bytes:
    b = _SB.pack(abi.FS_MAGIC, gen, nblocks, table, table_crc)
    return (b + struct.pack("<I", crc32(b))).ljust(BS, b"\0")


def unpack_sb(b: bytes):
    if len(b) < _SB.size + 4:
        return None
    magic, gen, nblocks, table, tcrc = _SB.unpack_from(b, 0)
    crc, = struct.unpack_from("<I", b, _SB.size)
    if magic != abi.FS_MAGIC or crc != crc32(b[:_SB.size]) or table > 1:
        return None
    return gen, nblocks, table, tcrc


# --------------------------------------------------------------------------
# Images and namespaces
# --------------------------------------------------------------------------
def make_label(namespaces: list[tuple[int, int]]) -> bytes:
    b = bytearray(BS)
    struct.pack_into("<QII", b, 0, abi.LABEL_MAGIC, len(namespaces), 0)
    for i, (s, n) in enumerate(namespaces):
        struct.pack_into("<QQ", b, 16 + 16 * i, s, n)
    return bytes(b)


def mkfs(path: str, size: int, namespaces: int = 4) -> list[tuple[int, int]]:
    """Create (or overwrite) an image: a label and `namespaces` empty file systems."""
    if not 1 <= namespaces <= abi.LABEL_MAX_NS:
        raise FsError(f"namespaces must be 1..{abi.LABEL_MAX_NS}")
    blocks = size // BS
    per = (blocks - 1) // namespaces
    if per < abi.FS_DATA_START + 1:
        raise FsError(f"image of {size} bytes is too small for {namespaces} namespaces")
    ns = [(1 + i * per, per) for i in range(namespaces)]
    with open(path, "wb") as f:
        f.truncate(blocks * BS)
        f.write(make_label(ns))
        for start, n in ns:
            table = bytearray(TABLE_BYTES)
            table[:abi.FS_INODE_SIZE] = Inode(abi.FS_DIR, 0, 0, 0, 0, 1, "").pack()
            f.seek((start + 1) * BS)            # generation g lives in block g & 1
            f.write(pack_sb(1, n, 0, crc32(table)))
            f.seek((start + abi.FS_TABLE_A) * BS)
            f.write(table)
        f.flush()
        os.fsync(f.fileno())
    return ns


def namespaces(fd: int) -> list[tuple[int, int]]:
    from devices.disk import read_label
    return read_label(fd, os.fstat(fd).st_size)


class Volume:
    """Block I/O on one namespace of an image (or any object with read/write blocks)."""

    def __init__(self, fd: int, start: int, nblocks: int):
        self.fd, self.start, self.nblocks = fd, start, nblocks

    def read(self, block: int, n: int = 1) -> bytes:
        if block < 0 or block + n > self.nblocks:
            raise FsError(f"block {block}+{n} outside the namespace ({self.nblocks} blocks)")
        return os.pread(self.fd, n * BS, (self.start + block) * BS).ljust(n * BS, b"\0")

    def write(self, block: int, data: bytes) -> None:
        n = (len(data) + BS - 1) // BS
        if block < 0 or block + n > self.nblocks:
            raise FsError(f"block {block}+{n} outside the namespace ({self.nblocks} blocks)")
        os.pwrite(self.fd, data.ljust(n * BS, b"\0"), (self.start + block) * BS)

    def flush(self) -> None:
        os.fsync(self.fd)


# --------------------------------------------------------------------------
# The file system
# --------------------------------------------------------------------------
class Fs:
    def __init__(self, vol: Volume):
        self.vol = vol
        best = None
        for slot in (0, 1):
            sb = unpack_sb(vol.read(slot))
            if sb is None:
                continue
            gen, nblocks, table, tcrc = sb
            raw = vol.read(abi.FS_TABLE_A + table * abi.FS_TABLE_BLOCKS, abi.FS_TABLE_BLOCKS)
            if crc32(raw) != tcrc or nblocks > vol.nblocks:
                continue
            if best is None or gen > best[0]:
                best = (gen, nblocks, table, raw)
        if best is None:
            raise FsError("no valid XOFS superblock (not formatted? run xomb-vmm mkfs)")
        self.gen, self.nblocks, self.table, raw = best
        self.inodes = [Inode.unpack(raw, i * abi.FS_INODE_SIZE) for i in range(abi.FS_INODES)]

    @classmethod
    def open(cls, path: str, ns: int = 0, write: bool = False) -> "Fs":
        fd = os.open(path, os.O_RDWR if write else os.O_RDONLY)
        nss = namespaces(fd)
        if not 0 <= ns < len(nss):
            os.close(fd)
            raise FsError(f"{path}: no namespace {ns} (it has {len(nss)})")
        try:
            return cls(Volume(fd, *nss[ns]))
        except BaseException:
            os.close(fd)
            raise

    def close(self):
        os.close(self.vol.fd)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    # -- lookup -------------------------------------------------------------
    def lookup(self, path: str) -> int:
        ino = 0
        for part in [p for p in path.split("/") if p]:
            if self.inodes[ino].type != abi.FS_DIR:
                raise FsError(f"{path}: not a directory")
            for i, nd in enumerate(self.inodes):
                if i and nd.type != abi.FS_FREE and nd.parent == ino and nd.name == part:
                    ino = i
                    break
            else:
                raise FsError(f"{path}: no such file or directory")
        return ino

    def _parent(self, path: str) -> tuple[int, str]:
        parts = [p for p in path.split("/") if p]
        if not parts:
            raise FsError(f"{path!r}: needs a name")
        name = parts[-1]
        if len(name.encode()) > abi.FS_NAME_MAX:
            raise FsError(f"{name}: name longer than {abi.FS_NAME_MAX} bytes")
        d = self.lookup("/".join(parts[:-1]))
        if self.inodes[d].type != abi.FS_DIR:
            raise FsError(f"{path}: parent is not a directory")
        return d, name

    def children(self, ino: int) -> list[int]:
        return [i for i, nd in enumerate(self.inodes)
                if i and nd.type != abi.FS_FREE and nd.parent == ino]

    def listdir(self, path: str = "/") -> list[tuple[str, int, int]]:
        ino = self.lookup(path)
        nd = self.inodes[ino]
        if nd.type == abi.FS_FILE:
            return [(nd.name, nd.type, nd.size)]
        return sorted((self.inodes[i].name, self.inodes[i].type, self.inodes[i].size)
                      for i in self.children(ino))

    def read(self, path: str) -> bytes:
        nd = self.inodes[self.lookup(path)]
        if nd.type != abi.FS_FILE:
            raise FsError(f"{path}: is a directory")
        if not nd.size:
            return b""
        return self.vol.read(nd.start, nd.nblocks)[:nd.size]

    # -- allocation ---------------------------------------------------------
    def _alloc(self, n: int) -> int:
        used = bytearray(self.nblocks)
        used[:abi.FS_DATA_START] = b"\1" * abi.FS_DATA_START
        for nd in self.inodes:
            if nd.type == abi.FS_FILE and nd.nblocks:
                used[nd.start:nd.start + nd.nblocks] = b"\1" * nd.nblocks
        run = 0
        for b in range(abi.FS_DATA_START, self.nblocks):
            run = 0 if used[b] else run + 1
            if run == n:
                return b - n + 1
        raise FsError(f"no room: {n} contiguous free blocks needed")

    def _commit(self) -> None:
        raw = b"".join(nd.pack() for nd in self.inodes)
        slot = self.table ^ 1
        self.vol.write(abi.FS_TABLE_A + slot * abi.FS_TABLE_BLOCKS, raw)
        self.vol.flush()                        # data + table durable before the switch
        self.gen += 1
        self.vol.write(self.gen & 1, pack_sb(self.gen, self.nblocks, slot, crc32(raw)))
        self.vol.flush()
        self.table = slot

    def _free_inode(self) -> int:
        for i, nd in enumerate(self.inodes):
            if i and nd.type == abi.FS_FREE:
                return i
        raise FsError(f"no free inode (at most {abi.FS_INODES - 1} files)")

    # -- changes (each one a commit) ----------------------------------------
    def write(self, path: str, data: bytes) -> None:
        d, name = self._parent(path)
        try:
            ino = self.lookup(path)
            if self.inodes[ino].type != abi.FS_FILE:
                raise FsError(f"{path}: is a directory")
        except FsError as e:
            if "no such" not in str(e):
                raise
            ino = self._free_inode()
        n = (len(data) + BS - 1) // BS
        start = self._alloc(n) if n else 0
        if n:
            self.vol.write(start, data)
        self.inodes[ino] = Inode(abi.FS_FILE, d, len(data), start, n, self.gen + 1, name)
        self._commit()

    def mkdir(self, path: str) -> None:
        d, name = self._parent(path)
        if any(self.inodes[i].name == name for i in self.children(d)):
            raise FsError(f"{path}: exists")
        self.inodes[self._free_inode()] = Inode(abi.FS_DIR, d, 0, 0, 0, self.gen + 1, name)
        self._commit()

    def remove(self, path: str) -> None:
        ino = self.lookup(path)
        if ino == 0:
            raise FsError("cannot remove the root directory")
        if self.inodes[ino].type == abi.FS_DIR and self.children(ino):
            raise FsError(f"{path}: directory not empty")
        self.inodes[ino] = Inode()
        self._commit()

    def check(self) -> list[str]:
        """Consistency problems (an empty list is a clean file system)."""
        bad, owner = [], {}
        for i, nd in enumerate(self.inodes):
            if nd.type == abi.FS_FREE:
                continue
            if i and (self.inodes[nd.parent].type != abi.FS_DIR or nd.parent == i):
                bad.append(f"inode {i} ({nd.name}): parent {nd.parent} is not a directory")
            if nd.type == abi.FS_FILE:
                if nd.size > nd.nblocks * BS:
                    bad.append(f"inode {i}: size {nd.size} beyond its {nd.nblocks} blocks")
                if nd.nblocks and (nd.start < abi.FS_DATA_START or
                                   nd.start + nd.nblocks > self.nblocks):
                    bad.append(f"inode {i}: extent outside the data area")
                for b in range(nd.start, nd.start + nd.nblocks):
                    if b in owner:
                        bad.append(f"block {b} used by inodes {owner[b]} and {i}")
                        break
                    owner[b] = i
        return bad
