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

/* The running kernel's version string, which it publishes in the gate page
 * every address space maps read-only (KINFO_VA, docs/UPGRADE.md).  It changes
 * under a running program when the kernel is upgraded without a reboot. */
static inline const char *kernel_version(void)
{
    const volatile uint64_t *magic = (const volatile uint64_t *)XOMB_KINFO_VA;
    return *magic == XOMB_KINFO_MAGIC ? (const char *)(XOMB_KINFO_VA + XOMB_KINFO_VERSION)
                                      : "unknown";
}
