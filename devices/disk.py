"""The self-virtualizing disk: one physical function (a host file), N virtual functions.

Each VF is a namespace (an LBA range of the image, from the image's label) with one
NVMe-style queue pair that lives in its *owner's* memory, addressed with the owner's
virtual addresses (shared virtual addressing through devices/iommu.py).  VF i is device
page ``DEV_DISK_VF0 + i``; its registers, its binding to the address space that maps it,
the doorbell protocol, fault delivery and interrupts are every VF's (devices/vf.py).
What is the disk's own: the queue setup, and one worker thread per VF that does
zero-copy I/O (os.preadv / os.pwritev on memoryviews of guest RAM); flush is fsync.
Layouts: vmm/abi.py and docs/DEVICES.md.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import threading

from vmm import abi
from devices.base import _block_signals, device_thread
from devices.iommu import IommuFault
from devices.vf import MASK32, U32 as _U32, VfDevice, VirtualFunction, put as _put

_SQE = struct.Struct("<BBHIQQ")          # opcode flags cid nblocks lba buf
_CQE_HEAD = struct.Struct("<IHH")        # result sq_head cid
_U16 = struct.Struct("<H")
_LABEL = struct.Struct("<QII")
_ENABLED = struct.Struct("<IIIIQQQIIII")     # status page from DS_SQ_TAIL to DS_VF
BS = abi.DISK_BLOCK
# A batch moving this much runs its I/O on a small thread pool -- only with CPUs to spare:
# on a 2-CPU host (one spinning vCPU) the pool costs more than it overlaps.
PARALLEL_BYTES = 256 << 10 if (os.cpu_count() or 1) >= 4 else 1 << 62
TRACE = [] if os.environ.get('XOMB_DISK_TRACE') else None


def read_label(fd: int, size: int) -> list[tuple[int, int]]:
    """Namespaces (start block, blocks) from the image's label; no label: the whole file."""
    hdr = os.pread(fd, BS, 0)
    if len(hdr) >= _LABEL.size:
        magic, count, _ = _LABEL.unpack_from(hdr, 0)
        if magic == abi.LABEL_MAGIC and 0 < count <= abi.LABEL_MAX_NS:
            out = []
            for i in range(count):
                start, n = struct.unpack_from("<QQ", hdr, 16 + 16 * i)
                if start >= 1 and (start + n) * BS <= size:
                    out.append((start, n))
            if out:
                return out
    return [(0, size // BS)] if size >= BS else []


def _punch_hole():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        f = libc.fallocate
        f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
        return f
    except (OSError, AttributeError):
        return None


_FALLOCATE = _punch_hole()


class VF(VirtualFunction):
    """One namespace: its LBA range and its queue pair."""

    def __init__(self, disk: "Disk", index: int, start: int, nblocks: int):
        super().__init__(disk, index, {"commands": 0, "bytes": 0, "flushes": 0})
        self.start, self.nblocks = start, nblocks
        self.sq_va = self.cq_va = self.qsize = 0
        self.sq_head = self.cq_tail = 0
        self.cache: dict = {}           # the IOTLB: lives for one batch
        self.stalled = False


class Disk(VfDevice):
    name = "disk"
    FIRST_PAGE = abi.DEV_DISK_VF0
    IRQ_WORD = abi.DS_IRQ

    def __init__(self, path: str, readonly: bool = False):
        super().__init__()
        self.path = path
        self.fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR)
        self.size = os.fstat(self.fd).st_size
        ns = read_label(self.fd, self.size)[:abi.DISK_MAX_VFS]
        if not ns:
            os.close(self.fd)
            raise ValueError(f"{path}: smaller than one {BS}-byte block")
        self.vfs = [VF(self, i, s, n) for i, (s, n) in enumerate(ns)]
        self._executor = None

    def devtab_entry(self) -> bytes:
        return struct.pack("<IIIIQQ", abi.DEVT_DISK, abi.DEV_DISK_VF0, len(self.vfs), BS,
                           self.size // BS, 0)

    def threads(self) -> list[threading.Thread]:
        return [device_thread(lambda vf=vf: self._loop(vf), f"disk-vf{vf.index}")
                for vf in self.vfs]

    def stop(self) -> None:
        super().stop()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if TRACE is not None:
            with open(os.environ['XOMB_DISK_TRACE'], 'w') as f:
                f.write("\n".join(map(str, TRACE)))

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass

    # ------------------------------------------------------------------ binding
    def doorbell_without_eventfd(self, vf: VF) -> None:
        self._batch(vf)

    def setup(self, vf: VF, spa: int) -> str | None:
        """The queue pair from the status page (VfDevice.enable found the owner)."""
        s = self.mem
        sq, cq = struct.unpack_from("<QQ", s, spa + abi.DS_SETUP_SQ_VA)
        qsize = _U32.unpack_from(s, spa + abi.DS_SETUP_QSIZE)[0]
        if qsize < 2 or qsize > abi.DISK_MAX_QSIZE or qsize & (qsize - 1) or \
                sq & (abi.SQE_SIZE - 1) or cq & (abi.CQE_SIZE - 1):
            return f"bad queue setup (qsize {qsize})"
        vf.sq_va, vf.cq_va, vf.qsize = sq, cq, qsize
        vf.sq_head = vf.cq_tail = 0
        vf.stalled = False
        vf.cache = {}
        _put(s, spa, _ENABLED, 0, 0, 0, abi.DSTATE_READY, 0, 0, vf.nblocks, BS,
             abi.DISK_MAX_BLOCKS, 0, vf.index)
        return None

    def describe_binding(self, vf: VF) -> str:
        return f", {vf.qsize} entries"

    def unbind(self, vf: VF, why: str | None) -> None:
        super().unbind(vf, why)
        vf.stalled = False
        vf.cache = {}

    # ------------------------------------------------------------------ the worker
    def _loop(self, vf: VF):
        while not self._stop.is_set():
            if self._batch(vf):
                continue
            if vf.stalled:              # completion queue full: poll gently
                self._stop.wait(0.0005)
                continue
            self.idle(vf, lambda spa: self._pending(vf, spa))

    def _pending(self, vf: VF, spa: int) -> bool:
        return _U32.unpack_from(self.mem, spa + abi.DS_SQ_TAIL)[0] != vf.sq_head

    def _batch(self, vf: VF) -> bool:
        """Run what the owner submitted.  True if anything was done."""
        with vf.lock:
            spa = self.live(vf)
            if spa is None:
                return False
            vf.cache = {}               # the IOTLB lives for one batch
            m = self.mem
            tail = _U32.unpack_from(m, spa + abi.DS_SQ_TAIL)[0]
            n = (tail - vf.sq_head) & MASK32
            if n == 0:
                return False
            vf.stats["batches"] += 1
            if n > vf.qsize:            # a doorbell beyond the ring: refuse the batch
                self.error(vf, spa)
                vf.sq_head = tail
                _put(m, spa + abi.DS_SQ_HEAD, _U32, tail)
                self._complete(vf, spa, 0xFFFF, abi.DST_BAD_DOORBELL, 0)
                return True
            done = 0
            vf.stalled = False
            batch: list = []            # (cid, status, result, job): I/O runs after the fetch
            while vf.sq_head != tail:
                cq_head = _U32.unpack_from(m, spa + abi.DS_CQ_HEAD)[0]
                if ((vf.cq_tail - cq_head) & MASK32) + len(batch) >= vf.qsize:
                    vf.stalled = not batch
                    break               # completion queue full: wait for the driver
                sqe_pa = self.queue_entry(vf, spa, vf.sq_va, vf.sq_head, abi.SQE_SIZE,
                                          abi.IOMMU_R, vf.cache, "submission queue")
                if sqe_pa is None:
                    return True
                op, _fl, cid, nblk, lba, buf = _SQE.unpack_from(m, sqe_pa)
                vf.sq_head = (vf.sq_head + 1) & MASK32
                batch.append((cid, op) + self._prepare(vf, op, nblk, lba, buf))
            self._run_jobs(vf, batch)
            for cid, _op, status, result, _job in batch:
                if not self._complete(vf, spa, cid, status, result):
                    return True
                done += 1
            _put(m, spa + abi.DS_SQ_HEAD, _U32, vf.sq_head)
            if done:                    # completions posted: interrupt a waiting driver
                self.interrupt(vf, spa)
            return done > 0

    def _run_jobs(self, vf: VF, batch: list) -> None:
        """Do the batch's I/O: reads and writes between two flushes/discards run in
        parallel when they are big (preadv/pwritev release the GIL), a flush only after
        everything before it.  Fills in each entry's (status, result)."""
        group: list[int] = []

        def run_group():
            if len(group) > 1 and sum(batch[i][3] for i in group) >= PARALLEL_BYTES:
                results = list(self._pool().map(lambda i: batch[i][4](), group))
            else:
                results = [batch[i][4]() for i in group]
            for i, (st, res) in zip(group, results):
                cid, op = batch[i][:2]
                batch[i] = (cid, op, st, res, None)
                if st:
                    self._err(vf, st)
            group.clear()

        for i, (cid, op, st, res, job) in enumerate(batch):
            if job is None:
                continue
            if op in (abi.DOP_READ, abi.DOP_WRITE):
                group.append(i)
                continue
            run_group()
            st, res = job()
            batch[i] = (cid, op, st, res, None)
            if st:
                self._err(vf, st)
        run_group()

    def _pool(self):
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor
            self._executor = ThreadPoolExecutor(4, thread_name_prefix="disk-io",
                                                initializer=_block_signals)
        return self._executor

    def _prepare(self, vf: VF, op: int, nblk: int, lba: int, buf: int):
        """Check a command and translate its buffer (in submission order, under the
        VF lock).  Returns (status, result, job): job() does the I/O and returns
        (status, result); a refused command has no job."""
        vf.stats["commands"] += 1
        if op not in (abi.DOP_READ, abi.DOP_WRITE, abi.DOP_FLUSH, abi.DOP_DISCARD):
            return self._err(vf, abi.DST_BAD_OPCODE) + (None,)
        fd = self.fd
        if op == abi.DOP_FLUSH:
            vf.stats["flushes"] += 1

            def flush():
                try:
                    os.fsync(fd)
                except OSError:
                    return abi.DST_IO_ERROR, 0
                return abi.DST_OK, 0
            return abi.DST_OK, 0, flush
        if nblk == 0 or nblk > abi.DISK_MAX_BLOCKS:
            return self._err(vf, abi.DST_TOO_LONG) + (None,)
        if lba >= vf.nblocks or nblk > vf.nblocks - lba:
            return self._err(vf, abi.DST_LBA_RANGE) + (None,)
        off = (vf.start + lba) * BS
        n = nblk * BS
        if op == abi.DOP_DISCARD:
            def discard():
                try:
                    if _FALLOCATE is None or _FALLOCATE(fd, 3, off, n) != 0:
                        os.pwrite(fd, bytes(n), off)
                except OSError:
                    return abi.DST_IO_ERROR, 0
                return abi.DST_OK, 0
            return abi.DST_OK, 0, discard
        access = abi.IOMMU_W if op == abi.DOP_READ else abi.IOMMU_R
        try:
            runs = self.iommu.translate(vf.root, buf, n, access, vf.index, vf.cache)
        except IommuFault as f:
            self._fault(vf, f.record)
            return abi.DST_IOMMU_FAULT, 0, None
        m = self.mem
        bufs = [m[pa:pa + k] for pa, k in runs]
        vf.stats["bytes"] += n
        if op == abi.DOP_READ:
            def read():
                try:
                    got = os.preadv(fd, bufs, off)
                except OSError:
                    return abi.DST_IO_ERROR, 0
                if got < n:             # past the end of a short (sparse) image: zeros
                    self._zero_tail(bufs, got)
                return abi.DST_OK, n
            return abi.DST_OK, n, read

        def write():
            try:
                if os.pwritev(fd, bufs, off) != n:
                    return abi.DST_IO_ERROR, 0
            except OSError:
                return abi.DST_IO_ERROR, 0
            return abi.DST_OK, n
        return abi.DST_OK, n, write

    @staticmethod
    def _zero_tail(bufs, got):
        for b in bufs:
            if got >= len(b):
                got -= len(b)
                continue
            b[got:] = bytes(len(b) - got)
            got = 0

    def _err(self, vf: VF, code: int) -> tuple[int, int]:
        self.error(vf, vf.status_pa)
        return code, 0

    def _complete(self, vf: VF, spa: int, cid: int, status: int, result: int) -> bool:
        pa = self.queue_entry(vf, spa, vf.cq_va, vf.cq_tail, abi.CQE_SIZE, abi.IOMMU_W,
                              vf.cache, "completion queue")
        if pa is None:
            return False
        phase = ((vf.cq_tail // vf.qsize) & 1) ^ 1
        m = self.mem
        _put(m, pa, _CQE_HEAD, result & MASK32, vf.sq_head & 0xFFFF, cid)
        _put(m, pa + abi.CQE_STATUS, _U16, (status << 1) | phase)   # last: publishes
        if TRACE is not None:
            TRACE.append((vf.index, vf.cq_tail, cid, status, phase, pa))
        vf.cq_tail = (vf.cq_tail + 1) & MASK32
        return True

    def _fault(self, vf: VF, rec) -> None:
        self.fault(vf, vf.status_pa, rec, vf.cache)

    # ------------------------------------------------------------------ reports
    def report(self) -> str:
        return self.report_vfs(f"disk {self.path}: {self.size // BS} blocks, {len(self.vfs)} VFs",
                               lambda vf: f": blocks {vf.start}..{vf.start + vf.nblocks},")
