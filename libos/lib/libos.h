/* Process-wide state of the libOS, set up by libos_start() (start.c). */
#pragma once
#include <stdint.h>
#include "xomb_abi.h"

extern int libos_host;          /* XOMB_HOST_VMX / PVM / QEMU */
extern int libos_is_root;       /* 1 in init: owns all memory, has the platform page */
extern const char *libos_name;  /* argv[0] */
extern uint64_t libos_tsc_khz;  /* 0 if unknown */
extern uint64_t libos_initrd_size; /* bytes of the boot archive at XOMB_INITRD_VA (0: none) */
extern uint64_t libos_arg_flags;   /* ARGS_F_* from the parent (args.h) */
extern uint64_t libos_ncpus;       /* CPUs in the machine */
extern uint64_t libos_home_cpu;    /* the CPU our START upcall arrived on */

/* The root's boot information (NULL in a child). */
extern const struct xomb_bootinfo *libos_bootinfo;

int main(int argc, char **argv);
__attribute__((noreturn)) void exit(int status);

static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void compiler_barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

/* The running kernel's version, which it publishes in the gate page every
 * address space maps read-only (KINFO_VA, docs/UPGRADE.md).  It can change
 * under a running program (a rebootless upgrade), even in the middle of our
 * copy: the build stamp beside it is read before and after, and the copy is
 * retried until both agree.  out must hold XOMB_KINFO_VERSION_MAX bytes. */
static inline void kernel_version(char *out)
{
    const volatile uint64_t *magic = (const volatile uint64_t *)XOMB_KINFO_VA;
    const volatile uint64_t *build = (const volatile uint64_t *)(XOMB_KINFO_VA + XOMB_KINFO_BUILD);
    const volatile char *v = (const volatile char *)(XOMB_KINFO_VA + XOMB_KINFO_VERSION);
    uint64_t before;
    do {
        before = *build;
        if (*magic != XOMB_KINFO_MAGIC) {
            __builtin_memcpy(out, "unknown", 8);
            return;
        }
        for (unsigned i = 0; i < XOMB_KINFO_VERSION_MAX; i++)
            out[i] = v[i];
        out[XOMB_KINFO_VERSION_MAX - 1] = 0;
    } while (*build != before);
}
