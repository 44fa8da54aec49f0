/* faults: hostile code.  Every attack runs in a child of its own (this same
 * program, `faults --attack NAME`), so that the attack can kill it; we
 * watch how each one ended and go on with the next:
 *
 *   attack NAME: stopped (HOW)      the kernel refused or killed it
 *   attack NAME: NOT STOPPED        the attack worked
 *
 * The exit status is the number not stopped.  The machine must still be
 * running afterwards (the shell prompt comes back).
 *
 * How a child reports: it dies (CHILD_ERROR, or its own fault handler
 * exits with 128 + vector), or a system call refuses (exit 100 + error),
 * or the attack went through (exit 99).
 */
#include "xomb.h"

#define WORKED 99
#define REFUSED 100
#define ATTACK_POOL 64
#define TEST_VA 0x20000000000UL
#define FORGED 0xf0f0f0f0UL             /* arg1 of a forged CHILD_ERROR */

static int refused(long rv) { return rv < 0 ? REFUSED + (int)-rv : WORKED; }

/* A page we hold, writable, at va. */
static int own_page(uint64_t va)
{
    return page_alloc_at(XOMB_AS_SELF, va, XOMB_MAP_W) == 0;
}

/* An address space handle we do not hold. */
static long foreign_handle(void)
{
    for (long h = XOMB_MAX_HANDLES - 1; h >= 2; h--)
        if (!vm_handle_root((unsigned)h))
            return h;
    return 2;
}

static int quiet_fault(struct xomb_frame *f)
{
    exit(128 + (int)f->vector);         /* die quietly: the parent reports it */
}

__attribute__((noreturn)) static void jump_to(uint64_t target, uint64_t rax, uint64_t rcx)
{
    __asm__ volatile("mov %1, %%rax\n\t"
                     "mov %2, %%rcx\n\t"
                     "mov $0x1111, %%rdi\n\t"
                     "mov $0x2222, %%rsi\n\t"
                     "mov $0x3333, %%rdx\n\t"
                     "jmp *%0"
                     : : "r"(target), "r"(rax), "r"(rcx) : "rax", "rcx", "rdi", "rsi", "rdx", "memory");
    __builtin_unreachable();
}

static int attack(const char *name)
{
    set_fault_handler(quiet_fault);
    if (!strcmp(name, "kernel-write")) {
        *(volatile uint64_t *)(XOMB_KBASE + XOMB_KERNEL_PHYS) = 0;
        return WORKED;
    }
    if (!strcmp(name, "kinfo-write")) {          /* forge the kernel's version stamp */
        *(volatile uint64_t *)(XOMB_KINFO_VA + XOMB_KINFO_VERSION) = 0x6b61667e;
        return WORKED;
    }
    if (!strcmp(name, "kernel-read")) {
        (void)*(volatile uint64_t *)(XOMB_KBASE + XOMB_BOOTINFO_PHYS);
        return WORKED;
    }
    if (!strcmp(name, "selfmap-write")) {
        *(volatile uint64_t *)(XOMB_SELF_PML4 + 8 * 3) = 0x1007;  /* forge a PDPT */
        return WORKED;
    }
    if (!strcmp(name, "pagetable-write")) {
        /* a leaf entry of ours, through the self-map: make our stack map frame 0 */
        *(volatile uint64_t *)(XOMB_SELF_PT + ((XOMB_STACK_TOP - 4096) >> 12) * 8) = 0x7;
        return WORKED;
    }
    if (!strcmp(name, "frames-write")) {
        (void)*(volatile uint64_t *)XOMB_FRAMES_VA;   /* reading is allowed */
        *(volatile uint64_t *)XOMB_FRAMES_VA = 0x100000001ULL;
        return WORKED;
    }
    if (!strcmp(name, "amplify-w")) {
        if (!own_page(TEST_VA))
            return 2;
        xomb_map(XOMB_AS_SELF, TEST_VA + 0x1000, XOMB_AS_SELF, TEST_VA, 1, 0);
        return refused(xomb_map(XOMB_AS_SELF, TEST_VA + 0x2000, XOMB_AS_SELF, TEST_VA + 0x1000, 1,
                                XOMB_MAP_W).rv);
    }
    if (!strcmp(name, "amplify-x")) {
        if (!own_page(TEST_VA))
            return 2;
        return refused(xomb_map(XOMB_AS_SELF, TEST_VA + 0x2000, XOMB_AS_SELF, TEST_VA, 1,
                                XOMB_MAP_X | XOMB_MAP_W).rv);
    }
    if (!strcmp(name, "archive-write")) {       /* the shared boot archive is read-only */
        if (!libos_initrd_size)
            return 2;
        mem_ensure_tables(XOMB_AS_SELF, TEST_VA);
        return refused(xomb_map(XOMB_AS_SELF, TEST_VA, XOMB_AS_SELF, XOMB_INITRD_VA, 1,
                                XOMB_MAP_W).rv);
    }
    if (!strcmp(name, "map-foreign")) {
        if (!own_page(TEST_VA))
            return 2;
        return refused(xomb_map(foreign_handle(), XOMB_PROGRAM_VA, XOMB_AS_SELF, TEST_VA, 1, 0).rv);
    }
    if (!strcmp(name, "yield-foreign"))
        return refused(xomb_yield(foreign_handle(), XOMB_UP_START, 0, 0));
    if (!strcmp(name, "forge-upcall"))          /* tell the parent its child died */
        return refused(xomb_yield(XOMB_AS_PARENT, XOMB_UP_CHILD_ERROR, 14, FORGED));
    if (!strcmp(name, "steal-parent")) {
        mem_ensure_tables(XOMB_AS_SELF, TEST_VA);
        return refused(xomb_map(XOMB_AS_SELF, TEST_VA, XOMB_AS_PARENT, XOMB_PROGRAM_VA, 1, 0).rv);
    }
    if (!strcmp(name, "destroy-parent"))
        return refused(xomb_release(XOMB_AS_PARENT, 0, 0).rv);
    if (!strcmp(name, "kernel-jump"))
        jump_to(XOMB_KERNEL_VIRT, 0, 0);
    if (!strcmp(name, "div-zero")) {
        __asm__ volatile("xor %%edx, %%edx\n\txor %%ecx, %%ecx\n\tmov $1, %%eax\n\tdiv %%ecx"
                         ::: "rax", "rcx", "rdx");
        return WORKED;
    }
    if (!strcmp(name, "ud2")) {
        __asm__ volatile("ud2");
        return WORKED;
    }
    if (!strcmp(name, "int3")) {
        __asm__ volatile("int3");
        return WORKED;
    }
    if (!strcmp(name, "cli")) {
        __asm__ volatile("cli");
        return WORKED;
    }
    if (!strcmp(name, "mov-cr3")) {
        uint64_t v = 0;
        __asm__ volatile("mov %0, %%cr3" : : "r"(v));
        return WORKED;
    }
    if (!strcmp(name, "hlt")) {
        __asm__ volatile("hlt");
        return WORKED;
    }
    if (!strcmp(name, "wrmsr")) {                /* LSTAR */
        __asm__ volatile("wrmsr" : : "c"(0xC0000082), "a"(0), "d"(0));
        return WORKED;
    }
    if (!strcmp(name, "port-io")) {              /* the PS/2 controller: reset line */
        __asm__ volatile("outb %0, $0x64" : : "a"((uint8_t)0xFE));
        return WORKED;
    }
    if (!strcmp(name, "gate-exec"))              /* the gate page, not at its entry */
        jump_to(XOMB_GATE_VA + 64, 0, 0);
    if (!strcmp(name, "wild-syscall")) {
        set_syscall_handler(0);                  /* reflected, unhandled: dies */
        xomb_syscall6(0x7fffdeadbeefcafeLL, ~0UL, 0x8000000000000000UL, 0, ~0UL, 1, 2);
        return WORKED;
    }
    if (!strcmp(name, "gate-noncanonical-rcx"))  /* "syscall" via the gate, rcx bogus */
        jump_to(XOMB_GATE_VA, XOMB_SYS_MAP, 0x8000000000001000UL);
    if (!strcmp(name, "gate-kernel-rcx"))        /* ... returning into the kernel */
        jump_to(XOMB_GATE_VA, XOMB_SYS_MAP, XOMB_KERNEL_VIRT);
    if (!strcmp(name, "no-frame-fault")) {       /* fault with no activation frame */
        xomb_release(XOMB_AS_SELF, XOMB_UPCALL_VA, 1);
        __asm__ volatile("ud2");
        return WORKED;
    }
    if (!strcmp(name, "device-frame")) {         /* a device page as the activation */
        xomb_release(XOMB_AS_SELF, XOMB_UPCALL_VA, 1);   /* frame: the kernel must not */
        struct xomb_result r = xomb_map(XOMB_AS_SELF, XOMB_UPCALL_VA, XOMB_AS_SELF,
                                        XOMB_CONSOLE_BELL_VA, 1, XOMB_MAP_W);
        if (r.rv < 0)                            /* write registers into a device */
            return REFUSED;
        __asm__ volatile("ud2");
        return WORKED;
    }
    if (!strcmp(name, "fault-in-handler")) {     /* the handler faults too */
        set_fault_handler(0);
        extern int fault_again(struct xomb_frame *);
        set_fault_handler(fault_again);
        __asm__ volatile("ud2");
        return WORKED;
    }
    if (!strcmp(name, "bad-stack")) {            /* fault with rsp in the kernel */
        __asm__ volatile("mov %0, %%rsp\n\tpush %%rax" : : "r"(XOMB_KBASE + 0x1000) : "memory");
        return WORKED;
    }
    printf("faults: unknown attack %s\n", name);
    return 1;
}

int fault_again(struct xomb_frame *f)
{
    (void)f;
    __asm__ volatile("ud2");
    return 0;
}

static const char *const attacks[] = {
    "kernel-write", "kernel-read", "selfmap-write", "pagetable-write", "frames-write",
    "amplify-w", "amplify-x", "archive-write", "map-foreign", "yield-foreign",
    "forge-upcall", "steal-parent", "destroy-parent", "kernel-jump", "div-zero", "ud2",
    "int3", "cli", "mov-cr3", "hlt", "wrmsr", "port-io", "gate-exec", "wild-syscall",
    "gate-noncanonical-rcx", "gate-kernel-rcx", "no-frame-fault", "device-frame",
    "fault-in-handler", "bad-stack", "kinfo-write",
};

static void describe(char *buf, size_t n, const struct proc_status *st)
{
    if (st->died)
        snprintf(buf, n, "killed: %s at 0x%lx", vector_name(st->vector), st->addr);
    else if (st->status >= REFUSED && st->status < REFUSED + 20)
        snprintf(buf, n, "%s", xomb_errname(-(long)(st->status - REFUSED)));
    else if (st->status == 128 + XOMB_VEC_SYSCALL)
        snprintf(buf, n, "reflected to the libOS as a SYSCALL upcall");
    else if (st->status >= 128)
        snprintf(buf, n, "%s, fault upcall", vector_name((uint64_t)st->status - 128));
    else
        snprintf(buf, n, "status %d", st->status);
}

int main(int argc, char **argv)
{
    if (argc >= 3 && !strcmp(argv[1], "--attack"))
        return attack(argv[2]);

    int only = argc >= 2;               /* faults NAME...: just those */
    int not_stopped = 0;
    unsigned n = sizeof(attacks) / sizeof(attacks[0]);
    for (unsigned i = 0; i < (only ? (unsigned)argc - 1 : n); i++) {
        const char *name = only ? argv[i + 1] : attacks[i];
        struct spawn_opts o = { ATTACK_POOL, 0 };
        char *cargv[] = { "faults", "--attack", (char *)name, 0 };
        long h = spawn_with("faults", cargv, &o);
        if (h < 0) {
            printf("attack %s: cannot start (%s)\n", name, spawn_error());
            not_stopped++;
            continue;
        }
        struct proc_status st;
        wait_status(h, &st, 1);
        if (st.died && st.addr == FORGED) {
            printf("attack %s: NOT STOPPED (a forged CHILD_ERROR reached us)\n", name);
            not_stopped++;
        } else if (!st.died && st.status == WORKED) {
            printf("attack %s: NOT STOPPED\n", name);
            not_stopped++;
        } else if (!st.died && st.status < REFUSED) {
            printf("attack %s: NOT STOPPED (could not even try: status %d)\n", name, st.status);
            not_stopped++;
        } else {
            char how[96];
            describe(how, sizeof(how), &st);
            printf("attack %s: stopped (%s)\n", name, how);
        }
    }
    printf("faults: %u attacks, %d not stopped\n", only ? (unsigned)argc - 1 : n, not_stopped);
    return not_stopped;
}
