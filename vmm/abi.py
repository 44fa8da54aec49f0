"""The guest/host ABI: the one source of truth.

Everything the VMM, the kernel (assembly) and the libOS (C) must agree on lives
here: physical and virtual memory layout, syscall numbers, error codes, upcall
numbers, the activation-frame layout, the boot-information page, the frame
table, and the console ring.  `python -m vmm.abi` (and the build) generate

    build/gen/xomb_abi.h    for the libOS   (#define XOMB_...)
    build/gen/abi.inc       for the kernel  (.equ ...)

so the three can never disagree.  tests/test_abi.py checks the generated files
match this module.

Read docs/SYSCALLS.md and docs/ARCHITECTURE.md for what the numbers mean.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

PAGE = 4096
ABI_VERSION = 1

# --------------------------------------------------------------------------
# Physical memory layout (guest-physical addresses).
# --------------------------------------------------------------------------
KERNEL_PHYS = 0x100000          # kernel image (flat binary) is loaded here
KERNEL_MAX = 0x100000           # at most 1 MiB including bss
BOOTINFO_PHYS = 0x200000        # boot-information page (read-only to init)
KTABLES_PHYS = 0x201000         # kernel page tables built by the VMM
FRAMES_PHYS = 0x400000          # the frame table: one u64 per frame
MIN_RAM = 16 << 20
MAX_RAM = 2 << 30               # the kernel reaches RAM through KBASE+phys (top 2 GiB)

# Device register pages sit directly above RAM, so the frame table (and the
# root's window) cover them like any other frame: devices are memory too.
DEV_CONSOLE_DOORBELL = 0        # index of the page in the device area
DEV_PLATFORM = 1                # exit register, boot timer
DEV_PAGES = 16                  # reserved device pages (later issues add NIC/disk)
DEV_DISK_VF0 = 2                # disk virtual function i: device page DEV_DISK_VF0 + i
DISK_MAX_VFS = 8                # (docs/DEVICES.md)

# --------------------------------------------------------------------------
# Device discovery: a table in the boot-information page (init reads it).
#   u32 count at BOOTINFO_DEVTAB, then DEVTAB_ENTRY-byte entries from +8:
#   u32 type, u32 first device page, u32 functions (VFs), u32 block size,
#   u64 total blocks, u64 reserved.
# --------------------------------------------------------------------------
BOOTINFO_DEVTAB = 2048
DEVTAB_ENTRY = 32
DEVTAB_MAX = 8
DEVT_DISK = 1

# --------------------------------------------------------------------------
# Every virtual function of a self-virtualizing device (devices/vf.py): its
# register page, and the words every VF's status page (in the owner's memory)
# has at the same offsets.  Each device's DS_* / NS_* names alias these.
# --------------------------------------------------------------------------
VF_DOORBELL = 0         # any write: "look at my queue" (ioeventfd, never exits)
VF_ENABLE = 8           # u64 write: VA of the status page (setup inside): bind + enable
VF_DISABLE = 16         # any write: drop the queues and the binding
VFS_WAITING = 8         # u32 device: 0 awake, else the number of its current sleep:
                        #   ring VF_DOORBELL after queueing work (once per number)
VFS_STATE = 12          # u32 device: DSTATE_*
VFS_FAULTS = 16         # u64 device: IOMMU faults delivered (the polled "upcall")
VFS_ERRORS = 24         # u64 device: malformed requests so far
VFS_SETUP_VF_VA = 256   # u64 driver, before VF_ENABLE: where it maps the register page
VFS_SETUP_FAULT_VA = 288  # u64 driver: fault ring (FAULT_REC-aligned records)
VFS_SETUP_FAULT_N = 296  # u32 driver: records in the fault ring

# --------------------------------------------------------------------------
# Self-virtualizing disk (devices/disk.py, docs/DEVICES.md).
# --------------------------------------------------------------------------
# Status page (owner's memory, one page; offsets).  Driver writes the DS_SETUP
# part and DS_SQ_TAIL / DS_CQ_HEAD; the device writes the rest.
DS_SQ_TAIL = 0          # u32 driver: free-running submission tail
DS_CQ_HEAD = 4          # u32 driver: free-running completion head (consumed)
DS_WAITING = VFS_WAITING
DS_STATE = VFS_STATE
DS_FAULTS = VFS_FAULTS
DS_ERRORS = VFS_ERRORS  # malformed submissions
DS_NS_BLOCKS = 32       # u64 device: blocks in this VF's namespace
DS_BLOCK_SIZE = 40      # u32 device
DS_MAX_BLOCKS = 44      # u32 device: most blocks one command may move
DS_SQ_HEAD = 48         # u32 device: entries consumed
DS_VF = 52              # u32 device: which VF (endpoint id)
DS_IRQ = 56             # u32 driver: 1 = interrupt me (device page DEV_DISK_VF0 + vf)
                        #   after completions and faults; 0 = I poll
DS_SETUP = 256          # driver, before VF_ENABLE:
DS_SETUP_VF_VA = VFS_SETUP_VF_VA
DS_SETUP_SQ_VA = 264    #   u64 submission queue (QSIZE * 64 bytes)
DS_SETUP_CQ_VA = 272    #   u64 completion queue (QSIZE * 16 bytes)
DS_SETUP_QSIZE = 280    #   u32 entries, a power of two, 2..DISK_MAX_QSIZE
DS_SETUP_FAULT_VA = VFS_SETUP_FAULT_VA
DS_SETUP_FAULT_N = VFS_SETUP_FAULT_N
DSTATE_OFF = 0
DSTATE_READY = 1
DSTATE_UNBOUND = 2      # the binding failed (see the VMM's iommu log)
DISK_BLOCK = 4096
DISK_MAX_BLOCKS = 256   # 1 MiB per command
DISK_MAX_QSIZE = 1024
# Submission entry (64 bytes): u8 opcode, u8 flags, u16 cid, u32 nblocks,
# u64 lba, u64 buf (owner virtual address), 40 reserved.
SQE_SIZE = 64
SQE_OPCODE = 0
SQE_CID = 2
SQE_NBLOCKS = 4
SQE_LBA = 8
SQE_BUF = 16
# Completion entry (16 bytes): u32 result (bytes), u16 sq_head, u16 cid,
# u16 status = code << 1 | phase, u16 reserved, u32 reserved.
CQE_SIZE = 16
CQE_RESULT = 0
CQE_SQ_HEAD = 4
CQE_CID = 6
CQE_STATUS = 8
DOP_READ = 1
DOP_WRITE = 2
DOP_FLUSH = 3           # durable: the host file is fsync'ed before completion
DOP_DISCARD = 4
DST_OK = 0
DST_BAD_OPCODE = 1
DST_LBA_RANGE = 2
DST_TOO_LONG = 3
DST_IOMMU_FAULT = 4
DST_IO_ERROR = 5
DST_BAD_DOORBELL = 6    # sq_tail claims more entries than the ring holds
# IOMMU fault record (32 bytes) in the owner's fault ring, and in the VMM log:
# u64 address, u32 endpoint (VF), u32 access (IOMMU_R / IOMMU_W), u32 reason, u32 seq, u64 rsvd.
FAULT_REC = 32
IOMMU_R = 1
IOMMU_W = 2
IOMMU_NOT_MAPPED = 1    # no user mapping at that address in the owner
IOMMU_READ_ONLY = 2     # a device write into memory the owner may only read
IOMMU_KERNEL = 3        # kernel-only (supervisor) or above USER_LIMIT
IOMMU_NOT_RAM = 4       # a device page or beyond RAM (no peer-to-peer DMA)

# --------------------------------------------------------------------------
# Self-virtualizing NIC (devices/nic.py, docs/DEVICES.md "The NIC").  VF i is
# device page DEV_NIC_VF0 + i; its MAC is NIC_MAC_BASE + i (52:54:00:12:34:56+i).
# Device table entry: u32 DEVT_NIC, u32 DEV_NIC_VF0, u32 VFs, u32 guest IP,
#   u32 gateway, u32 prefix, u64 MAC of VF 0 (bytes in wire order, little end first).
# --------------------------------------------------------------------------
DEVT_NIC = 2
DEV_NIC_VF0 = 10
NIC_MAX_VFS = 4
NIC_MAC_BASE = 0x525400123456       # VF i: this + i (the last byte)
NIC_DOORBELL = VF_DOORBELL      # "my tx_tail moved"
NIC_ENABLE = VF_ENABLE
NIC_DISABLE = VF_DISABLE
# Status page (owner's memory).  Rings are indexed by free-running u32 counters.
NS_TX_TAIL = 0          # u32 driver: TX descriptors posted
NS_RX_TAIL = 4          # u32 driver: RX buffers posted
NS_WAITING = VFS_WAITING
NS_STATE = VFS_STATE
NS_FAULTS = VFS_FAULTS
NS_ERRORS = VFS_ERRORS  # malformed descriptors / doorbells
NS_TX_HEAD = 32         # u32 device: TX descriptors done (their status written)
NS_RX_HEAD = 36         # u32 device: RX descriptors filled (their length written)
NS_IRQ = 40             # u32 driver: 1 = interrupt me when a frame arrives (I am about to halt)
NS_VF = 44              # u32 device: which VF
NS_MAC = 48             # 6 bytes device: this VF's MAC
NS_IP = 56              # u32 device: guest IPv4 address (host byte order), 0 = none
NS_GATEWAY = 60         # u32 device
NS_PREFIX = 64          # u32 device: prefix length
NS_MTU_FRAME = 68       # u32 device: largest frame (NIC_MTU_FRAME)
NS_TX_PACKETS = 72      # u64 device
NS_RX_PACKETS = 80      # u64 device
NS_RX_DROPS = 88        # u64 device: frames for us dropped (no buffer posted, too big)
NS_SPOOFED = 96         # u64 device: frames we sent with a source MAC not ours (dropped)
NS_SETUP_VF_VA = VFS_SETUP_VF_VA
NS_SETUP_TX_VA = 264    #   u64 TX ring (QSIZE * NDESC_SIZE)
NS_SETUP_RX_VA = 272    #   u64 RX ring
NS_SETUP_QSIZE = 280    #   u32 entries per ring, a power of two, 2..NIC_MAX_QSIZE
NS_SETUP_FAULT_VA = VFS_SETUP_FAULT_VA
NS_SETUP_FAULT_N = VFS_SETUP_FAULT_N
NIC_MAX_QSIZE = 1024
NIC_MTU_FRAME = 1514    # largest frame without FCS
NIC_MIN_FRAME = 14      # an Ethernet header
# Descriptor (16 bytes, TX and RX): u64 buf (owner VA), u16 len (TX: frame length;
# RX: written by the device), u16 buflen (RX: buffer size, driver), u16 status
# (device: NST_*), u16 reserved.
NDESC_SIZE = 16
NDESC_BUF = 0
NDESC_LEN = 8
NDESC_BUFLEN = 10
NDESC_STATUS = 12
NST_OK = 0
NST_TOO_LONG = 1        # TX len > NIC_MTU_FRAME, or < NIC_MIN_FRAME
NST_IOMMU_FAULT = 2     # the buffer is not DMA-able (a fault record says why)
NST_SPOOFED = 3         # TX source MAC is not the VF's: dropped
NST_BAD_DOORBELL = 4    # the tail claims more than QSIZE entries
NST_DONE = 0x8000       # or-ed into status when the device has finished the descriptor
# libOS convention: VF i's register page at NIC_VF_VA + i*4096 in whoever holds it;
# the driver's rings and buffers at NIC_QUEUE_VA + i*NIC_QUEUE_STRIDE.
NIC_VF_VA = 0x18000
NIC_QUEUE_VA = 0x2400_0000
NIC_QUEUE_STRIDE = 0x10_0000
NIC_QSIZE = 128

# --------------------------------------------------------------------------
# XOFS: the libOS file system on a disk namespace (vmm/xofs.py, libos/lib/fs.c).
# Block 0: disk label (whole image).  In each namespace (blocks relative to it):
#   0, 1   superblock pair: the valid one with the higher generation wins
#   2..    inode table A (FS_TABLE_BLOCKS), then inode table B, then data
# Superblock: u64 magic, u64 generation, u64 nblocks, u32 table (0 = A, 1 = B),
#   u32 table_crc (crc32 of the table), u32 crc (crc32 of the 32 bytes before).
# Inode (64 bytes): u32 type, u32 parent, u64 size, u32 start, u32 nblocks,
#   u64 generation, char name[32].  Inode 0 is the root directory.
# --------------------------------------------------------------------------
LABEL_MAGIC = 0x4C42414C424D4F58      # "XOMBLABL": u64 magic, u32 count, u32 0,
LABEL_MAX_NS = 8                        # then (u64 start, u64 nblocks) per namespace
FS_MAGIC = 0x5346424F4D4F58            # "XOMOBFS"
FS_INODES = 256
FS_INODE_SIZE = 64
FS_NAME_MAX = 31
FS_TABLE_BLOCKS = FS_INODES * FS_INODE_SIZE // 4096
FS_TABLE_A = 2
FS_DATA_START = 2 + 2 * FS_TABLE_BLOCKS
FS_FREE = 0
FS_FILE = 1
FS_DIR = 2
# libOS convention: where a process maps its disk VF, where a grantor keeps
# VFs it may hand on (page i at DISK_SPARE_VA + i*4096), where the driver's
# queues live (status page, SQ, CQ, fault ring).
DISK_VF_VA = 0x8000
DISK_SPARE_VA = 0x10000
DISK_QUEUE_VA = 0x2000_0000

# --------------------------------------------------------------------------
# Virtual layout.
# --------------------------------------------------------------------------
USER_TOP = 0x0000_8000_0000_0000        # first non-canonical user address
PML4_GATE = 255                         # kernel-owned in every AS: the gate page
USER_LIMIT = PML4_GATE << 39            # users map, create and release below this
KBASE = 0xFFFF_FFFF_8000_0000           # kernel view: KBASE + phys, phys < 2 GiB
KERNEL_VIRT = KBASE + KERNEL_PHYS
PML4_USERWIN = 384                      # user-readable kernel window
USERWIN_VA = 0xFFFF_C000_0000_0000
# The PVM syscall gate: a page of int3 (R+X, user, kernel-owned) at the last
# user page.  It must be in the lower half: on PVM a ring-3 `syscall` jumps to
# LSTAR truncated to the user half.
GATE_VA = USER_TOP - PAGE
FRAMES_VA = USERWIN_VA + 0x20_0000      # frame table, read-only to user
PML4_INFO = 256                         # non-present PML4 slot: AS entry point << 1
PML4_HANDLE0 = 256                      # handle h lives in PML4[256 + h], h >= 1
MAX_HANDLES = 128                       # handles 1..127 (1 = parent)
PML4_SELF = 510                         # recursive self-map (read-only, user)
PML4_KERNEL = 511
SELF_PT = 0xFFFF_FF00_0000_0000         # + (va >> 12) * 8 : level-1 entry of va
SELF_PD = 0xFFFF_FF7F_8000_0000         # + (va >> 21) * 8
SELF_PDPT = 0xFFFF_FF7F_BFC0_0000       # + (va >> 30) * 8
SELF_PML4 = 0xFFFF_FF7F_BFDF_E000       # + (va >> 39) * 8

# Fixed user addresses (the libOS convention the kernel relies on is UPCALL_VA).
UPCALL_VA = 0x1000          # activation frame page (written by the kernel)
ARGS_VA = 0x2000            # argv page given to a child by its parent
BOOTINFO_VA = 0x3000        # boot info (init only, read-only)
CONSOLE_OUT_VA = 0x4000     # console ring guest->host
CONSOLE_IN_VA = 0x5000      # console ring host->guest
CONSOLE_BELL_VA = 0x6000    # console doorbell (device page)
PLATFORM_VA = 0x7000        # platform device page (init only)
PROGRAM_VA = 0x40_0000      # programs are linked here
INITRD_VA = 0x1000_0000     # boot archive of programs (init only, read-only)
HEAP_VA = 0x4000_0000
STACK_TOP = 0x8000_0000
STACK_PAGES = 16
SCRATCH_VA = 0x1_0000_0000  # loader scratch area
POOL_VA = 0x40_0000_0000    # a process's spare frames (its own allocator)
WINDOW_VA = 0x80_0000_0000  # root only: frame p is "at home" at WINDOW_VA + p*4096

# --------------------------------------------------------------------------
# Page-table entry bits.
# --------------------------------------------------------------------------
PTE_P = 1 << 0
PTE_W = 1 << 1
PTE_U = 1 << 2
PTE_PWT = 1 << 3
PTE_PCD = 1 << 4
PTE_A = 1 << 5
PTE_D = 1 << 6
PTE_PS = 1 << 7
PTE_G = 1 << 8
PTE_SLOT = 1 << 9           # software bit: a (non-present) handle slot
PTE_NX = 1 << 63
PTE_ADDR = 0x000F_FFFF_FFFF_F000

# --------------------------------------------------------------------------
# Frame table: u64 per frame at FRAMES_PHYS (kernel) / FRAMES_VA (user, RO).
#   bits 0..31  count: DATA = number of mappings; ROOT = pages the AS holds
#   bits 32..39 type
# --------------------------------------------------------------------------
FT_KERNEL = 0               # never mappable (the default for zeroed entries)
FT_DATA = 1
FT_TABLE = 2                # a page-table page (levels 1..3)
FT_ROOT = 3                 # a PML4: an address space
FT_DEVICE = 4               # device register page (never zeroed)
FT_TYPE_SHIFT = 32
FT_COUNT_MASK = 0xFFFF_FFFF

# --------------------------------------------------------------------------
# System calls: rax = number, args rdi, rsi, rdx, r10, r8, r9.
# Returns rax >= 0 on success, -error on failure; map/release also return in
# rdx the number of pages done.  Clobbers rax rcx rdx rsi rdi r8-r11.
# --------------------------------------------------------------------------
SYSCALLS = {
    "CREATE": 0,    # create(as, va, level, donor_va)          -> 0
    "MAP": 1,       # map(dst_as, dst_va, src_as, src_va, n, flags) -> 0 (rdx = done)
    "AS_CREATE": 2, # as_create(donor_va, entry, slot)          -> handle
    "YIELD": 3,     # yield(as, upcall, arg0, arg1)             -> no return / -error
    "RELEASE": 4,   # release(as, va, n)  (va=n=0, as=child: destroy) -> 0 (rdx = done)
}
NSYSCALLS = len(SYSCALLS)

AS_SELF = 0
AS_PARENT = 1

MAP_W = 1 << 1              # same positions as PTE_W ...
MAP_X = 1 << 2              # ... grant execute (absence -> NX)
MAP_MOVE = 1 << 3           # move instead of share: source mapping removed
MAP_FLAGS = MAP_W | MAP_X | MAP_MOVE
MAP_MAX_PAGES = 1 << 20

ERRORS = {                  # returned negated
    "EINVAL": 1,    # malformed argument: alignment, range, unknown flag, level
    "EBADH": 2,     # handle not held (or not allowed for this operation)
    "ENOTHELD": 3,  # source / donor page is not mapped in the caller
    "EPERM": 4,     # would amplify rights (write / execute not held)
    "EEXIST": 5,    # destination already mapped / region or slot in use
    "ENOTABLE": 6,  # no page table covers the destination (create a region)
    "EBUSY": 7,     # donor frame is shared, or the AS is running elsewhere
    "ETYPE": 8,     # frame of the wrong kind (device page as a table, ...)
    "ERANGE": 9,    # count too large, or the range leaves user space
}

# --------------------------------------------------------------------------
# Upcalls: entering a libOS.  At the entry point:
#   rdi = upcall, rsi = arg0, rdx = arg1, r8 = root (phys) of the sender,
#   rsp = 0, every other GPR = 0, rflags = 0x202.
# Numbers below UP_USER_MIN come only from the kernel; yield refuses them.
# --------------------------------------------------------------------------
UPCALLS = {
    "FAULT": 1,         # exception in this AS; frame at UPCALL_VA; arg0 = vector
    "SYSCALL": 2,       # unknown syscall number; frame at UPCALL_VA; arg0 = rax
    "CHILD_ERROR": 3,   # a child faulted with no handler; arg0 = vector, arg1 = rip/cr2
    "CPU": 4,           # (root) another CPU arrives at boot; arg0 = its index
    "TIMER": 5,         # (root) a tick: arg0 = 1 context saved in the frame, 0 woke from IDLE
    "PREEMPT": 6,       # a tick took the CPU from a child: r8 = its root, context in its frame
    "INTERRUPT": 7,     # a device interrupted while we waited (IDLE): arg0 = mask of device pages
    "START": 8,         # libOS protocol from here on: first entry
    "EXIT": 9,          # child exits; arg0 = status
    "RESUME": 10,       # CPU given back
    "POOL": 11,         # child's pool ran dry: arg0 = pages wanted, arg1 = where (its pool)
    "IDLE": 11,         # yield(AS_SELF, IDLE): halt this CPU until the next interrupt
    "DONATE": 12,       # a parent gives its child a CPU: run something, or give it back
    "GIVEBACK": 13,     # a child returns a CPU it does not need
}
UP_USER_MIN = 8
VEC_SYSCALL = 256           # frame.vector for a reflected syscall

# Activation frames: one per CPU at UPCALL_VA + cpu * FRAME_STRIDE (u64 fields,
# in this order).  Every upcall enters with r9 = the CPU's index.
FRAME_STRIDE = 256
FRAME_FIELDS = ["in_upcall", "vector", "error", "cr2", "rip", "rsp", "rflags",
                "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp",
                "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]

# --------------------------------------------------------------------------
# Boot information page (BOOTINFO_PHYS, mapped read-only at BOOTINFO_VA).
# --------------------------------------------------------------------------
BOOTINFO_MAGIC = 0x584F4D42_494E464F   # "XOMBINFO"
HOST_VMX = 0
HOST_PVM = 1
HOST_QEMU = 2                           # QEMU TCG, multiboot entry
BOOTINFO_FIELDS = ["magic", "version", "host", "ram_bytes", "nframes",
                   "dev_pfn", "root_phys", "lstar", "iomap_base",
                   "initrd_size", "console_out_pfn", "console_in_pfn",
                   "tsc_khz", "run_mode", "first_free_pfn", "ncpus", "timer_count", "apic"]
RUN_SHELL = 0                           # bootinfo.run_mode: interactive shell
RUN_COMMAND = 1                         # run the command line through xsh -c
RUN_BENCH = 2                           # init shares the platform page with `bench` (cmdline)
BOOTINFO_CMDLINE = 256                  # offset of a NUL-terminated command line
CMDLINE_MAX = 1024

# --------------------------------------------------------------------------
# Console ring (one page each way).  u32 head (consumer), u32 tail (producer),
# u32 waiting (consumer sleeps: producer must ring the doorbell).  Data at
# RING_DATA, RING_SIZE bytes, indices free-running modulo 2**32.
# --------------------------------------------------------------------------
RING_HEAD = 0
RING_TAIL = 4
RING_WAITING = 8
RING_DATA = 2048
RING_SIZE = 2048

# Platform device page (MMIO): write-only registers.
PLAT_EXIT = 0           # u32 status: power off, VMM exits with it
PLAT_BOOT_TIMER = 8     # any write: the guest reached its prompt (boot timer)
PLAT_MARK = 16          # u32 write: benchmark mark, op | (id << 8) (vmm/bench.py)
MARK_PHASE_BEGIN = 1    # phase `id` starts: the VMM snapshots exit counts and time
MARK_PHASE_END = 2      # phase `id` ends
MARK_COUNT_BEGIN = 3    # count window `id`: the VMM single-steps and counts instructions
MARK_COUNT_END = 4
MARK_ROUND = 5          # round `id` of the guest benchmarks begins (host round runs now)

# Ports (ring 0 on every host; ring 3 only under the QEMU platform).
PANIC_PORT = 0x501      # kernel: out dx=PANIC_PORT, al=vector -> VMM dumps state
SELFTEST_PORT = 0x503   # kernel_selftest: out dx, eax = 0 (pass) or the failed check

# Kernel identity (docs/UPGRADE.md): KINFO_SIZE bytes in the kernel image's data
# area, which the running kernel publishes at boot and after a rebootless upgrade
# into the gate page at GATE_KINFO, so every address space reads it at KINFO_VA.
KINFO_MAGIC = 0x464E494B424D4F58      # "XOMBKINF"
KINFO_BUILD = 8         # u64: the first 8 bytes of the kernel's source digest
KINFO_VERSION = 16      # char[KINFO_VERSION_MAX]: kernel_asm/VERSION, NUL-terminated
KINFO_VERSION_MAX = 48
KINFO_SIZE = 64
GATE_KINFO = 0x800      # offset in the gate page (the rest is int3)
KINFO_VA = GATE_VA + GATE_KINFO
COM1 = 0x3F8

# Boot archive (initrd) at INITRD_VA: header then entries, then file data.
INITRD_MAGIC = 0x44524E49424D4F58      # "XOMBINRD"
INITRD_NAME = 32                        # entry: name[32], u64 offset, u64 size

# Kernel page tables built by the VMM at KTABLES_PHYS (offsets of each page).
KT_PDPT = KTABLES_PHYS + 0x0000     # PML4[511] (P|W): 510 -> KT_PD0, 511 -> KT_PD1 (P|W)
KT_PD0 = KTABLES_PHYS + 0x1000      # phys 0..1 GiB, 2 MiB pages, supervisor, global, NX
KT_PD1 = KTABLES_PHYS + 0x2000      # phys 1..2 GiB
KT_UW_PDPT = KTABLES_PHYS + 0x3000  # PML4[384]: the user window (read-only, user)
KT_UW_PD = KTABLES_PHYS + 0x4000    # entries 1.. -> frame-table PTs (FRAMES_VA)
KT_GATE_PT = KTABLES_PHYS + 0x5000  # entry 511 -> KT_GATE (P|U, executable)
KT_GATE = KTABLES_PHYS + 0x6000     # the gate page: int3, and the kernel's identity at GATE_KINFO
KT_BOOT_PML4 = KTABLES_PHYS + 0x7000  # QEMU boot only: identity [0] + kernel [511]
KT_BOOT_PDPT = KTABLES_PHYS + 0x8000  # identity PDPT: entry 0 -> KT_PD0
KT_GATE_PDPT = KTABLES_PHYS + 0x9000  # PML4[255] (P|U): entry 511 -> KT_GATE_PD (P|U)
KT_GATE_PD = KTABLES_PHYS + 0xA000  # entry 511 -> KT_GATE_PT (P|U)
KT_KPT = KTABLES_PHYS + 0xB000      # KT_PD0[0]: the first 2 MiB in 4 KiB pages (kernel W^X)
KT_FT_PT = KTABLES_PHYS + 0xC000    # frame-table PTs follow

# GDT (Linux layout: PVM requires user CS 0x33 from STAR).
GDT_KCS = 0x10
GDT_KDS = 0x18
GDT_UCS32 = 0x23
GDT_UDS = 0x2B
GDT_UCS = 0x33
GDT_TSS0 = 0x40                     # 16-byte TSS descriptor per CPU
GDT_ENTRIES = 8 + 2 * 8
STAR_VALUE = 0x0023_0010_0000_0000
SFMASK_VALUE = 0x47700              # IF TF DF NT AC ... cleared on syscall entry
USER_RFLAGS = 0x202

# Interrupts (in-kernel LAPIC, x2APIC mode).
TIMER_VECTOR = 0x40
FLUSH_VECTOR = 0x41     # TLB shootdown IPI
DEV_VECTOR = 0x50       # device page i interrupts on vector DEV_VECTOR + i (an MSI
DEV_GSI = 32            # the VMM routes from GSI DEV_GSI + i, raised through an irqfd)
TICK_US = 10_000        # per-CPU timer period

# Kernel: per-CPU blocks (percpu words at the bottom, stack at the top) and TSSes.
MAX_CPUS = 8
KSTACK_SIZE = 0x4000
PC_SELF = 0             # percpu: its own address
PC_KTOP = 8             # this CPU's kernel stack top (= TSS.rsp0)
PC_SCRATCH = 16         # user rsp during the syscall entry
PC_CPU = 24             # CPU index
PC_ROOT = 32            # the root (PML4 phys) this CPU runs: for shootdowns and EBUSY
PC_FLUSH = 40           # set by another CPU: flush your TLB (then clear it)
PC_DEFER = 48           # ticks deferred because the frame was busy
PC_IRQ = 56             # device interrupts pending on this CPU (bit i = device page i)
PC_TICKS = 64           # ticks the running address space has had since it got the CPU
TSS_IOMAP = 104         # the I/O bitmap follows each TSS ...
TSS_IOMAP_BYTES = 256   # ... covering ports 0..0x7ff, then a 0xff byte
TSS_LIMIT = TSS_IOMAP + TSS_IOMAP_BYTES
TSS_STRIDE = 368
GDT_LIMIT = GDT_ENTRIES * 8 - 1

# Multiboot 1 header (the QEMU/PC entry), flags: page-align modules, memory
# info, load addresses in the header (flat image).
MB_MAGIC = 0x1BADB002
MB_FLAGS = 0x00010003
MB_CHECKSUM = (-(MB_MAGIC + MB_FLAGS)) & 0xFFFFFFFF
MB_BSS_END = 0x1000000  # QEMU loads modules above this; the blob must fit below


def _items():
    """Every constant as (NAME, value) for the generated files."""
    out = []
    g = globals()
    for k in sorted(g):
        v = g[k]
        if k.isupper() and isinstance(v, int) and not k.startswith("_"):
            out.append((k, v))
    out += [(f"SYS_{k}", v) for k, v in SYSCALLS.items()]
    out += [(k, v) for k, v in ERRORS.items()]
    # keystone reads `mov rax, -EINVAL` as a load from address EINVAL: the
    # kernel uses these ready-negated forms (two's complement, 64-bit).
    out += [(f"NEG_{k}", (-v) & (2**64 - 1)) for k, v in ERRORS.items()]
    out += [(f"UP_{k}", v) for k, v in UPCALLS.items()]
    out += [(f"FRAME_{f.upper()}", i * 8) for i, f in enumerate(FRAME_FIELDS)]
    out.append(("FRAME_SIZE", len(FRAME_FIELDS) * 8))
    out += [(f"BI_{f.upper()}", i * 8) for i, f in enumerate(BOOTINFO_FIELDS)]
    # keystone 0.9.2 mis-adds two symbols in one operand ([A + B] -> garbage),
    # so every absolute kernel address the assembly needs is one symbol here.
    out += [("FRAMES_KVA", KBASE + FRAMES_PHYS), ("BOOTINFO_KVA", KBASE + BOOTINFO_PHYS),
            ("KTABLES_KVA", KBASE + KTABLES_PHYS),
            ("GATE_RIP_LO", (GATE_VA + 1) & 0xFFFFFFFF), ("GATE_RIP_HI", (GATE_VA + 1) >> 32),
            ("FRAMES_TYPE_KVA", KBASE + FRAMES_PHYS + 4),
            ("KBASE_PML4_INFO", KBASE + PML4_INFO * 8),
            ("KBASE_SLOT0", KBASE + PML4_HANDLE0 * 8),
            ("KBASE_SLOT1", KBASE + (PML4_HANDLE0 + 1) * 8),
            ("KBASE_SELF", KBASE + PML4_SELF * 8),
            ("KBASE_USERWIN", KBASE + PML4_USERWIN * 8),
            ("KBASE_KERNEL", KBASE + PML4_KERNEL * 8),
            ("KBASE_WINDOW", KBASE + (WINDOW_VA >> 39) * 8),
            ("FT_DATA_ONE", frame_entry(FT_DATA, 1)),
            ("FT_TABLE_ONE", frame_entry(FT_TABLE, 1)),
            ("FT_ROOT_ONE", frame_entry(FT_ROOT, 1)),
            ("PTE_PU", PTE_P | PTE_U), ("PTE_PWU", PTE_P | PTE_W | PTE_U),
            ("KERNEL_PML4E", KT_PDPT | PTE_P | PTE_W),
            ("USERWIN_PML4E", KT_UW_PDPT | PTE_P | PTE_U),
            ("GATE_PML4E", KT_GATE_PDPT | PTE_P | PTE_U),
            ("KBASE_GATE", KBASE + PML4_GATE * 8),
            ("SELF_PT_UPCALL", SELF_PT + (UPCALL_VA >> 12) * 8),
            ("GATE_KINFO_KVA", KBASE + KT_GATE + GATE_KINFO),
            ("STAR_HI", STAR_VALUE >> 32)]
    out += [(f"BI_{f.upper()}_KVA", KBASE + BOOTINFO_PHYS + i * 8)
            for i, f in enumerate(BOOTINFO_FIELDS)]
    return out


def c_header() -> str:
    lines = ["/* Generated from vmm/abi.py - do not edit. */",
             "#pragma once", ""]
    for k, v in _items():
        if k.startswith("NEG_"):
            continue                    # assembly-only helpers
        lines.append(f"#define XOMB_{k} 0x{v:x}ULL" if v > 0x7FFFFFFF
                     else f"#define XOMB_{k} {v}")
    lines += ["", "#ifndef __ASSEMBLER__", "#include <stdint.h>",
              "struct xomb_frame {"]
    lines += [f"    uint64_t {f};" for f in FRAME_FIELDS]
    lines += ["};", "struct xomb_bootinfo {"]
    lines += [f"    uint64_t {f};" for f in BOOTINFO_FIELDS]
    lines += ["};", "#endif", ""]
    return "\n".join(lines)


def asm_include() -> str:
    lines = ["/* Generated from vmm/abi.py - do not edit. */"]
    lines += [f".equ {k}, 0x{v:x}" for k, v in _items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Python views used by the VMM and the tests.
# --------------------------------------------------------------------------
@dataclass
class BootInfo:
    host: int
    ram_bytes: int
    nframes: int
    dev_pfn: int
    root_phys: int
    lstar: int
    iomap_base: int
    initrd_size: int
    console_out_pfn: int
    console_in_pfn: int
    tsc_khz: int
    run_mode: int
    first_free_pfn: int
    cmdline: str = ""
    ncpus: int = 1
    timer_count: int = 0        # LAPIC timer initial count (divide by 1); 0 = no timer
    apic: int = 0               # 1: the VMM provides a local APIC (x2APIC): enable it

    def pack(self) -> bytes:
        vals = {"magic": BOOTINFO_MAGIC, "version": ABI_VERSION}
        vals.update({f: getattr(self, f) for f in BOOTINFO_FIELDS if f not in vals})
        page = bytearray(PAGE)
        struct.pack_into(f"<{len(BOOTINFO_FIELDS)}Q", page, 0,
                         *[vals[f] for f in BOOTINFO_FIELDS])
        cmd = self.cmdline.encode()
        if len(cmd) >= CMDLINE_MAX:
            raise ValueError(f"command line longer than {CMDLINE_MAX - 1} bytes")
        page[BOOTINFO_CMDLINE:BOOTINFO_CMDLINE + len(cmd)] = cmd
        return bytes(page)


def frame_entry(ftype: int, count: int) -> int:
    return (ftype << FT_TYPE_SHIFT) | (count & FT_COUNT_MASK)


def error_name(value: int) -> str:
    """Name of a (negated) error return, for traces and tests."""
    for k, v in ERRORS.items():
        if -v == value:
            return k
    return str(value)


def self_map_pte(va: int) -> int:
    """User-visible address of the level-1 entry that maps va (self-map)."""
    return SELF_PT + ((va & (USER_TOP - 1)) >> 12) * 8


if __name__ == "__main__":      # python -m vmm.abi OUTDIR
    import sys
    from pathlib import Path
    d = Path(sys.argv[1] if len(sys.argv) > 1 else "build/gen")
    d.mkdir(parents=True, exist_ok=True)
    (d / "xomb_abi.h").write_text(c_header())
    (d / "abi.inc").write_text(asm_include())
