"""The self-virtualizing disk: one physical function (a host file), N virtual functions.

Each VF is a namespace (an LBA range of the image, from the image's label) with one
NVMe-style queue pair that lives in its *owner's* memory, addressed with the owner's
virtual addresses (shared virtual addressing through devices/iommu.py).  Its register
page is device page ``DEV_DISK_VF0 + vf``:

    +VF_DOORBELL  any write: "my sq_tail moved" -- an ioeventfd: never exits to Python
    +VF_ENABLE    u64 write: VA of the status page (setup inside): bind + enable (exit)
    +VF_DISABLE   any write: unbind (exit)

The owner is whoever holds (maps) the register page: at VF_ENABLE the device searches
the address-space tree for the unique root that maps this VF's frame at the
``DS_SETUP_VF_VA`` the status page names; before every batch it re-checks that the
root still holds it (a freed or moved page unbinds the VF).  Layouts: vmm/abi.py and
docs/DEVICES.md.  One worker thread per enabled VF does zero-copy I/O (os.preadv /
os.pwritev on memoryviews of guest RAM); flush is fsync.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import threading
import time

from vmm import abi
from devices.base import Device, _block_signals, device_thread
from devices.iommu import IommuFault, iommu_for

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_SQE = struct.Struct("<BBHIQQ")          # opcode flags cid nblocks lba buf
_CQE_HEAD = struct.Struct("<IHH")        # result sq_head cid
_U16 = struct.Struct("<H")
_LABEL = struct.Struct("<QII")
_ENABLED = struct.Struct("<IIIIQQQIIII")     # status page from DS_SQ_TAIL to DS_VF
BS = abi.DISK_BLOCK
MASK32 = 0xFFFF_FFFF


def _put(mem, off: int, st: struct.Struct, *vals) -> None:
    """Store into memory the guest is reading concurrently.  Never struct.pack_into:
    CPython zeroes the destination before packing, so a polling driver can see a
    transient 0 -- a completion status of 0 carries a valid phase bit on odd passes."""
    mem[off:off + st.size] = st.pack(*vals)
SPIN_S = 0.0002             # keep polling this long after the queue empties
WAIT_TIMEOUT = 0.05
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


class VF:
    """One virtual function's state (owner, queues)."""

    def __init__(self, disk: "Disk", index: int, start: int, nblocks: int):
        self.disk, self.index, self.start, self.nblocks = disk, index, start, nblocks
        self.lock = threading.Lock()
        self.efd = None
        self.ready = False
        self.root = 0
        self.vf_va = self.status_va = self.sq_va = self.cq_va = self.fault_va = 0
        self.qsize = self.fault_n = 0
        self.sq_head = self.cq_tail = self.fault_seq = 0
        self.cache: dict = {}
        self.stalled = False
        self.stats = {"commands": 0, "bytes": 0, "flushes": 0, "faults": 0, "errors": 0,
                      "batches": 0, "doorbells": 0}

    @property
    def frame_pa(self) -> int:
        return self.disk.machine.device_page_gpa(abi.DEV_DISK_VF0 + self.index)


class Disk(Device):
    name = "disk"

    def __init__(self, path: str, readonly: bool = False):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR)
        self.size = os.fstat(self.fd).st_size
        ns = read_label(self.fd, self.size)[:abi.DISK_MAX_VFS]
        if not ns:
            os.close(self.fd)
            raise ValueError(f"{path}: smaller than one {BS}-byte block")
        self.vfs = [VF(self, i, s, n) for i, (s, n) in enumerate(ns)]
        self.log: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._executor = None

    # ------------------------------------------------------------------ attach
    def attach(self, machine) -> None:
        super().attach(machine)
        self.iommu = iommu_for(machine)
        self.iommu.devices.append(self)
        self.mem = machine.mem.view
        for vf in self.vfs:
            page = abi.DEV_DISK_VF0 + vf.index
            machine.register_mmio(page, self)
            vf.efd = machine.add_ioeventfd(machine.device_page_gpa(page) + abi.VF_DOORBELL)
        self._mfence = machine.mfence
        # the discovery table in the boot-information page (init reads it)
        bi = abi.BOOTINFO_PHYS + abi.BOOTINFO_DEVTAB
        count = _U32.unpack_from(self.mem, bi)[0]
        if count < abi.DEVTAB_MAX:
            struct.pack_into("<IIIIQQ", self.mem, bi + 8 + count * abi.DEVTAB_ENTRY,
                             abi.DEVT_DISK, abi.DEV_DISK_VF0, len(self.vfs), BS,
                             self.size // BS, 0)
            _U32.pack_into(self.mem, bi, count + 1)

    def start(self) -> None:
        self._stop.clear()
        self._threads = [device_thread(lambda vf=vf: self._loop(vf), f"disk-vf{vf.index}")
                         for vf in self.vfs]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for vf in self.vfs:
            if vf.efd is not None:
                try:
                    os.eventfd_write(vf.efd, 1)
                except OSError:
                    pass
        for t in self._threads:
            t.join(timeout=2.0)
        self._threads = []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self.machine.stats["disk"] = self.stats()
        if TRACE is not None:
            with open(os.environ['XOMB_DISK_TRACE'], 'w') as f:
                f.write("\n".join(map(str, TRACE)))
        self.machine.stats["iommu_faults"] = self.iommu.fault_count

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass

    def stats(self) -> dict:
        tot: dict = {}
        for vf in self.vfs:
            for k, v in vf.stats.items():
                tot[k] = tot.get(k, 0) + v
        return tot

    def _note(self, msg: str) -> None:
        self.log.append(msg)
        del self.log[:-200]

    # ------------------------------------------------------------------ registers
    def mmio_write(self, page: int, offset: int, data: bytes) -> None:
        vf = self.vfs[page - abi.DEV_DISK_VF0] if 0 <= page - abi.DEV_DISK_VF0 < len(self.vfs) else None
        if vf is None:
            return
        if offset == abi.VF_DOORBELL:          # no ioeventfd on this host
            if vf.efd is not None:
                os.eventfd_write(vf.efd, 1)
            else:
                self._batch(vf)
        elif offset == abi.VF_ENABLE:
            self.enable(vf, int.from_bytes(bytes(data).ljust(8, b"\0")[:8], "little"))
        elif offset == abi.VF_DISABLE:
            with vf.lock:
                self._unbind(vf, "disabled by its driver")
        else:
            vf.stats["errors"] += 1

    # ------------------------------------------------------------------ binding
    def _status_pa(self, root: int, va: int) -> int | None:
        pa = self.iommu.check_page(root, va & ~(abi.PAGE - 1), abi.IOMMU_W)
        return None if pa < 0 or va & (abi.PAGE - 1) else pa

    def enable(self, vf: VF, status_va: int) -> bool:
        """Bind the VF to the unique address space that maps its register page at the
        VA its status page names, then take the queue setup from that page."""
        with vf.lock:
            self._unbind(vf, None)
            frame = vf.frame_pa

            def probe(root):
                spa = self._status_pa(root, status_va)
                if spa is None:
                    return False
                va = _U64.unpack_from(self.mem, spa + abi.DS_SETUP_VF_VA)[0]
                return self.iommu.holds(root, va & ~(abi.PAGE - 1), frame)

            owners = self.iommu.find_owner(frame, probe)
            if len(owners) != 1:
                self._note(f"vf {vf.index}: enable refused: {len(owners)} address spaces "
                           f"match (status page {status_va:#x})")
                return False
            root = owners[0]
            spa = self._status_pa(root, status_va)
            s = self.mem
            vf_va, sq, cq = struct.unpack_from("<QQQ", s, spa + abi.DS_SETUP_VF_VA)
            qsize = _U32.unpack_from(s, spa + abi.DS_SETUP_QSIZE)[0]
            fva = _U64.unpack_from(s, spa + abi.DS_SETUP_FAULT_VA)[0]
            fn = _U32.unpack_from(s, spa + abi.DS_SETUP_FAULT_N)[0]
            if qsize < 2 or qsize > abi.DISK_MAX_QSIZE or qsize & (qsize - 1) or \
                    sq & (abi.SQE_SIZE - 1) or cq & (abi.CQE_SIZE - 1):
                _put(s, spa + abi.DS_STATE, _U32, abi.DSTATE_UNBOUND)
                self._note(f"vf {vf.index}: enable refused: bad queue setup (qsize {qsize})")
                return False
            vf.root, vf.vf_va, vf.status_va = root, vf_va & ~(abi.PAGE - 1), status_va
            vf.sq_va, vf.cq_va, vf.qsize = sq, cq, qsize
            vf.fault_va, vf.fault_n = fva, min(fn, 1 << 16)
            vf.sq_head = vf.cq_tail = vf.fault_seq = 0
            vf.stalled = False
            vf.cache = {}
            _put(s, spa, _ENABLED, 0, 0, 0, abi.DSTATE_READY, 0, 0, vf.nblocks, BS,
                 abi.DISK_MAX_BLOCKS, 0, vf.index)
            vf.ready = True
            self._note(f"vf {vf.index}: bound to root {root:#x} (register page at {vf_va:#x}, "
                       f"{qsize} entries)")
            return True

    def _unbind(self, vf: VF, why: str | None) -> None:
        if vf.ready and why:
            self._note(f"vf {vf.index}: unbound from root {vf.root:#x}: {why}")
        vf.ready = False
        vf.stalled = False
        vf.root = 0
        vf.cache = {}

    # ------------------------------------------------------------------ the worker
    def _loop(self, vf: VF):
        while not self._stop.is_set():
            if self._batch(vf):
                continue
            if vf.stalled:              # completion queue full: poll gently
                self._stop.wait(0.0005)
                continue
            spa = vf.cache.get("status") if vf.ready else None
            if spa is not None:
                t_end = time.perf_counter() + SPIN_S        # a short poll: no doorbell
                while time.perf_counter() < t_end and not self._pending(vf, spa):
                    pass
                if self._pending(vf, spa) or not self._set_waiting(vf, spa, 1):
                    continue
                self._mfence()
                if self._pending(vf, spa):
                    self._set_waiting(vf, spa, 0)
                    continue
            self._wait(vf)
            if spa is not None:
                self._set_waiting(vf, spa, 0)

    def _set_waiting(self, vf: VF, spa: int, value: int) -> bool:
        """Write DS_WAITING, but only into the status page of a live binding (the
        owner may have freed it since the batch: never write a stale frame)."""
        with vf.lock:
            if not vf.ready or vf.cache.get("status") != spa or \
                    not self.iommu.holds(vf.root, vf.vf_va, vf.frame_pa) or \
                    self.iommu.check_page(vf.root, vf.status_va, abi.IOMMU_W) != spa:
                return False
            _put(self.mem, spa + abi.DS_WAITING, _U32, value)
            return True

    def _pending(self, vf: VF, spa: int) -> bool:
        return _U32.unpack_from(self.mem, spa + abi.DS_SQ_TAIL)[0] != vf.sq_head

    def _wait(self, vf: VF):
        if vf.efd is None:
            self._stop.wait(0.001)
            return
        try:
            r, _, _ = select.select([vf.efd], [], [], WAIT_TIMEOUT)
        except (OSError, ValueError):
            return
        if r:
            try:
                vf.stats["doorbells"] += os.eventfd_read(vf.efd)
            except BlockingIOError:
                pass

    def _batch(self, vf: VF) -> bool:
        """Run what the owner submitted.  True if anything was done."""
        with vf.lock:
            if not vf.ready:
                vf.cache.pop("status", None)
                return False
            io = self.iommu
            if not io.holds(vf.root, vf.vf_va, vf.frame_pa):
                self._unbind(vf, "the owner no longer holds the register page")
                return False
            vf.cache = {}               # the IOTLB lives for one batch
            spa = io.check_page(vf.root, vf.status_va, abi.IOMMU_W)
            if spa < 0:
                self._fault(vf, io.record(vf.index, vf.status_va, abi.IOMMU_W, -spa, vf.root))
                self._unbind(vf, "status page unreachable")
                return False
            vf.cache["status"] = spa
            m = self.mem
            tail = _U32.unpack_from(m, spa + abi.DS_SQ_TAIL)[0]
            n = (tail - vf.sq_head) & MASK32
            if n == 0:
                return False
            vf.stats["batches"] += 1
            if n > vf.qsize:            # a doorbell beyond the ring: refuse the batch
                vf.stats["errors"] += 1
                self._bump(spa + abi.DS_ERRORS)
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
                try:
                    (sqe_pa, _), = io.translate(vf.root, vf.sq_va + (vf.sq_head % vf.qsize)
                                                * abi.SQE_SIZE, abi.SQE_SIZE, abi.IOMMU_R,
                                                vf.index, vf.cache)
                except IommuFault as f:
                    self._fault(vf, f.record)
                    self._unbind(vf, "submission queue unreachable")
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
            if done:
                self._interrupt(vf, spa)
            return done > 0

    def _interrupt(self, vf: VF, spa: int) -> None:
        """Completions (or a fault) are posted: if the driver chose interrupts
        (DS_IRQ), raise the VF's (irqfd -> MSI -> an INTERRUPT upcall into a driver
        waiting in IDLE; no VM exit)."""
        if _U32.unpack_from(self.mem, spa + abi.DS_IRQ)[0]:
            vf.stats["interrupts"] = vf.stats.get("interrupts", 0) + 1
            raise_irq = getattr(self.machine, "raise_irq", None)
            if raise_irq:
                raise_irq(abi.DEV_DISK_VF0 + vf.index)

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
        vf.stats["errors"] += 1
        spa = vf.cache.get("status")
        if spa is not None:
            self._bump(spa + abi.DS_ERRORS)
        return code, 0

    def _bump(self, pa: int):
        _put(self.mem, pa, _U64, _U64.unpack_from(self.mem, pa)[0] + 1)

    def _complete(self, vf: VF, spa: int, cid: int, status: int, result: int) -> bool:
        try:
            (pa, _), = self.iommu.translate(vf.root, vf.cq_va + (vf.cq_tail % vf.qsize)
                                            * abi.CQE_SIZE, abi.CQE_SIZE, abi.IOMMU_W,
                                            vf.index, vf.cache)
        except IommuFault as f:
            self._fault(vf, f.record)
            self._unbind(vf, "completion queue unreachable")
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
        """Deliver an IOMMU fault to the owner: a record in its fault ring and the
        DS_FAULTS count (the polled upcall); the VMM log has it already."""
        vf.stats["faults"] += 1
        spa = vf.cache.get("status")
        if spa is None:
            return
        if vf.fault_n:
            try:
                (pa, _), = self.iommu.translate(
                    vf.root, vf.fault_va + (vf.fault_seq % vf.fault_n) * abi.FAULT_REC,
                    abi.FAULT_REC, abi.IOMMU_W, vf.index, vf.cache)
                self.mem[pa:pa + abi.FAULT_REC] = rec.pack()
                vf.fault_seq += 1
            except IommuFault:
                pass                    # the ring itself is bad: the count still says it
        self._bump(spa + abi.DS_FAULTS)
        self._interrupt(vf, spa)                # the fault upcall, if interrupts are on

    # ------------------------------------------------------------------ reports
    def report(self) -> str:
        lines = [f"disk {self.path}: {self.size // BS} blocks, {len(self.vfs)} VFs"]
        for vf in self.vfs:
            who = f"root {vf.root:#x}" if vf.ready else "unbound"
            lines.append(f"  vf {vf.index}: blocks {vf.start}..{vf.start + vf.nblocks}, {who}, "
                         + ", ".join(f"{k} {v}" for k, v in vf.stats.items()))
        return "\n".join(lines + self.log[-10:])
