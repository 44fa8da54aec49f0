"""cffi (API mode) build of the KVM binding over the system's <linux/kvm.h>.

Every ioctl number, constant and struct layout comes from the header via the C
compiler; nothing is computed by hand.  The anonymous unions of `struct kvm_run`
are described as typedefs of the members' own types (`__typeof__`), so cffi gets
their layout from the compiler too, and their offsets are exported as constants.

Built by `pip install -e .` (setup.py: cffi_modules) or on the fly by vmm/kvm.py.
"""
from cffi import FFI

CDEF = r"""
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed int __s32;

/* ---- ioctls ---------------------------------------------------------- */
#define KVM_GET_API_VERSION ...
#define KVM_CREATE_VM ...
#define KVM_CHECK_EXTENSION ...
#define KVM_GET_VCPU_MMAP_SIZE ...
#define KVM_GET_SUPPORTED_CPUID ...
#define KVM_GET_MSR_INDEX_LIST ...
#define KVM_CREATE_VCPU ...
#define KVM_SET_USER_MEMORY_REGION ...
#define KVM_SET_TSS_ADDR ...
#define KVM_SET_IDENTITY_MAP_ADDR ...
#define KVM_CREATE_IRQCHIP ...
#define KVM_IOEVENTFD ...
#define KVM_RUN ...
#define KVM_GET_REGS ...
#define KVM_SET_REGS ...
#define KVM_GET_SREGS ...
#define KVM_SET_SREGS ...
#define KVM_GET_MSRS ...
#define KVM_SET_MSRS ...
#define KVM_SET_CPUID2 ...
#define KVM_SET_GUEST_DEBUG ...
#define KVM_GET_TSC_KHZ ...
#define KVM_TRANSLATE ...
#define KVM_GET_VCPU_EVENTS ...
#define KVM_SET_VCPU_EVENTS ...
#define KVM_GET_MP_STATE ...
#define KVM_SET_MP_STATE ...
#define KVM_MP_STATE_RUNNABLE ...

/* ---- capabilities ---------------------------------------------------- */
#define KVM_API_VERSION ...
#define KVM_CAP_IRQCHIP ...
#define KVM_CAP_HLT ...
#define KVM_CAP_USER_MEMORY ...
#define KVM_CAP_SET_TSS_ADDR ...
#define KVM_CAP_EXT_CPUID ...
#define KVM_CAP_IOEVENTFD ...
#define KVM_CAP_IOEVENTFD_ANY_LENGTH ...
#define KVM_CAP_IRQFD ...
#define KVM_CAP_SET_GUEST_DEBUG ...
#define KVM_CAP_IMMEDIATE_EXIT ...
#define KVM_CAP_GET_TSC_KHZ ...
#define KVM_CAP_NR_VCPUS ...
#define KVM_CAP_MAX_VCPUS ...
#define KVM_CAP_SET_IDENTITY_MAP_ADDR ...
#define KVM_CAP_GUEST_DEBUG_HW_BPS ...
#define KVM_CAP_VCPU_EVENTS ...
#define KVM_CAP_X86_ROBUST_SINGLESTEP ...

/* ---- exit reasons ---------------------------------------------------- */
#define KVM_EXIT_UNKNOWN ...
#define KVM_EXIT_EXCEPTION ...
#define KVM_EXIT_IO ...
#define KVM_EXIT_HYPERCALL ...
#define KVM_EXIT_DEBUG ...
#define KVM_EXIT_HLT ...
#define KVM_EXIT_MMIO ...
#define KVM_EXIT_IRQ_WINDOW_OPEN ...
#define KVM_EXIT_SHUTDOWN ...
#define KVM_EXIT_FAIL_ENTRY ...
#define KVM_EXIT_INTR ...
#define KVM_EXIT_NMI ...
#define KVM_EXIT_INTERNAL_ERROR ...
#define KVM_EXIT_SYSTEM_EVENT ...
#define KVM_EXIT_X86_RDMSR ...
#define KVM_EXIT_X86_WRMSR ...
#define KVM_EXIT_IO_IN ...
#define KVM_EXIT_IO_OUT ...
#define KVM_INTERNAL_ERROR_EMULATION ...
#define KVM_INTERNAL_ERROR_SIMUL_EX ...
#define KVM_INTERNAL_ERROR_DELIVERY_EV ...

/* ---- flags ----------------------------------------------------------- */
#define KVM_IOEVENTFD_FLAG_DATAMATCH ...
#define KVM_IOEVENTFD_FLAG_PIO ...
#define KVM_IOEVENTFD_FLAG_DEASSIGN ...
#define KVM_GUESTDBG_ENABLE ...
#define KVM_GUESTDBG_SINGLESTEP ...
#define KVM_GUESTDBG_USE_SW_BP ...
#define KVM_GUESTDBG_USE_HW_BP ...
#define KVM_MEM_READONLY ...

/* ---- structures (layouts checked by the compiler: "...;") ------------ */
struct kvm_regs {
    __u64 rax, rbx, rcx, rdx;
    __u64 rsi, rdi, rsp, rbp;
    __u64 r8,  r9,  r10, r11;
    __u64 r12, r13, r14, r15;
    __u64 rip, rflags;
    ...;
};
struct kvm_segment {
    __u64 base; __u32 limit; __u16 selector;
    __u8 type; __u8 present, dpl, db, s, l, g, avl; __u8 unusable;
    ...;
};
struct kvm_dtable { __u64 base; __u16 limit; ...; };
struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss;
    struct kvm_segment tr, ldt;
    struct kvm_dtable gdt, idt;
    __u64 cr0, cr2, cr3, cr4, cr8;
    __u64 efer;
    __u64 apic_base;
    __u64 interrupt_bitmap[...];
    ...;
};
struct kvm_msr_entry { __u32 index; __u32 reserved; __u64 data; };
struct kvm_msrs { __u32 nmsrs; __u32 pad; struct kvm_msr_entry entries[]; };
struct kvm_msr_list { __u32 nmsrs; __u32 indices[]; };
struct kvm_cpuid_entry2 {
    __u32 function; __u32 index; __u32 flags;
    __u32 eax; __u32 ebx; __u32 ecx; __u32 edx;
    ...;
};
struct kvm_cpuid2 { __u32 nent; __u32 padding; struct kvm_cpuid_entry2 entries[]; };
struct kvm_userspace_memory_region {
    __u32 slot; __u32 flags; __u64 guest_phys_addr; __u64 memory_size;
    __u64 userspace_addr;
};
struct kvm_ioeventfd {
    __u64 datamatch; __u64 addr; __u32 len; __s32 fd; __u32 flags;
    ...;
};
struct kvm_guest_debug_arch { __u64 debugreg[8]; };
struct kvm_guest_debug { __u32 control; __u32 pad; struct kvm_guest_debug_arch arch; };
struct kvm_debug_exit_arch { __u32 exception; __u32 pad; __u64 pc; __u64 dr6; __u64 dr7; };
/* exception/interrupt/nmi state, for re-injecting a guest #BP (debugger) */
struct kvm_mp_state {
    uint32_t mp_state;
};

struct kvm_vcpu_events {
    struct { __u8 injected; __u8 nr; __u8 has_error_code; __u8 pending; __u32 error_code; } exception;
    struct { __u8 injected; __u8 nr; __u8 soft; __u8 shadow; } interrupt;
    struct { __u8 injected; __u8 pending; __u8 masked; __u8 pad; } nmi;
    __u32 sipi_vector;
    __u32 flags;
    ...;
};
struct kvm_translation {
    __u64 linear_address; __u64 physical_address;
    __u8 valid; __u8 writeable; __u8 usermode;
    ...;
};

struct kvm_run {
    __u8 request_interrupt_window;
    __u8 immediate_exit;
    __u32 exit_reason;
    __u8 ready_for_interrupt_injection;
    __u8 if_flag;
    __u16 flags;
    __u64 cr8;
    __u64 apic_base;
    ...;
};

/* The anonymous union members of kvm_run, by their own (compiler) types. */
typedef struct { __u8 direction; __u8 size; __u16 port; __u32 count; __u64 data_offset; ...; } kvm_exit_io_t;
typedef struct { __u64 phys_addr; __u8 data[8]; __u32 len; __u8 is_write; ...; } kvm_exit_mmio_t;
typedef struct { __u64 hardware_entry_failure_reason; __u32 cpu; ...; } kvm_exit_fail_entry_t;
typedef struct { __u32 suberror; __u32 ndata; __u64 data[16]; ...; } kvm_exit_internal_t;
typedef struct { struct kvm_debug_exit_arch arch; ...; } kvm_exit_debug_t;
typedef struct { __u32 type; ...; } kvm_exit_system_event_t;

static const unsigned long XOMB_KVM_RUN_IO_OFFSET;
static const unsigned long XOMB_KVM_RUN_MMIO_OFFSET;
static const unsigned long XOMB_KVM_RUN_FAIL_ENTRY_OFFSET;
static const unsigned long XOMB_KVM_RUN_INTERNAL_OFFSET;
static const unsigned long XOMB_KVM_RUN_DEBUG_OFFSET;
static const unsigned long XOMB_KVM_RUN_SYSTEM_EVENT_OFFSET;

/* Non-variadic ioctl wrappers (cffi releases the GIL around them). */
int xomb_ioctl(int fd, unsigned long req, void *arg);
int xomb_ioctl_int(int fd, unsigned long req, unsigned long arg);
void *xomb_mmap_shared(int fd, size_t len);
int xomb_munmap(void *addr, size_t len);
void xomb_mfence(void);
/* MSI routes gsi[i] -> (address_lo[i], data[i]) and an irqfd per route:
 * built in C over <linux/kvm.h>'s kvm_irq_routing (a flexible array of
 * entries with a union), which cffi cannot describe. */
int xomb_set_msi_routes(int vmfd, int n, const uint32_t *gsi, const uint32_t *address_lo,
                        const uint32_t *data);
int xomb_irqfd(int vmfd, int eventfd, uint32_t gsi);
"""

SOURCE = r"""
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <stddef.h>

typedef __typeof__(((struct kvm_run *)0)->io) kvm_exit_io_t;
typedef __typeof__(((struct kvm_run *)0)->mmio) kvm_exit_mmio_t;
typedef __typeof__(((struct kvm_run *)0)->fail_entry) kvm_exit_fail_entry_t;
typedef __typeof__(((struct kvm_run *)0)->internal) kvm_exit_internal_t;
typedef __typeof__(((struct kvm_run *)0)->debug) kvm_exit_debug_t;
typedef __typeof__(((struct kvm_run *)0)->system_event) kvm_exit_system_event_t;

static const unsigned long XOMB_KVM_RUN_IO_OFFSET = offsetof(struct kvm_run, io);
static const unsigned long XOMB_KVM_RUN_MMIO_OFFSET = offsetof(struct kvm_run, mmio);
static const unsigned long XOMB_KVM_RUN_FAIL_ENTRY_OFFSET = offsetof(struct kvm_run, fail_entry);
static const unsigned long XOMB_KVM_RUN_INTERNAL_OFFSET = offsetof(struct kvm_run, internal);
static const unsigned long XOMB_KVM_RUN_DEBUG_OFFSET = offsetof(struct kvm_run, debug);
static const unsigned long XOMB_KVM_RUN_SYSTEM_EVENT_OFFSET = offsetof(struct kvm_run, system_event);

static int xomb_ioctl(int fd, unsigned long req, void *arg) { return ioctl(fd, req, arg); }
static int xomb_ioctl_int(int fd, unsigned long req, unsigned long arg) { return ioctl(fd, req, arg); }
static void *xomb_mmap_shared(int fd, size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    return p == MAP_FAILED ? NULL : p;
}
static int xomb_munmap(void *addr, size_t len) { return munmap(addr, len); }
static void xomb_mfence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

#include <stdlib.h>
#include <string.h>
static int xomb_set_msi_routes(int vmfd, int n, const uint32_t *gsi, const uint32_t *address_lo,
                               const uint32_t *data)
{
    struct kvm_irq_routing *r = calloc(1, sizeof(*r) + n * sizeof(r->entries[0]));
    if (!r)
        return -1;
    r->nr = n;
    for (int i = 0; i < n; i++) {
        r->entries[i].gsi = gsi[i];
        r->entries[i].type = KVM_IRQ_ROUTING_MSI;
        r->entries[i].u.msi.address_lo = address_lo[i];
        r->entries[i].u.msi.address_hi = 0;
        r->entries[i].u.msi.data = data[i];
    }
    int rv = ioctl(vmfd, KVM_SET_GSI_ROUTING, r);
    free(r);
    return rv;
}
static int xomb_irqfd(int vmfd, int eventfd, uint32_t gsi)
{
    struct kvm_irqfd f;
    memset(&f, 0, sizeof(f));
    f.fd = (uint32_t)eventfd;
    f.gsi = gsi;
    return ioctl(vmfd, KVM_IRQFD, &f);
}
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("vmm._kvm_cffi", SOURCE)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
