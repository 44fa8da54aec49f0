/* The five system calls of the xomb exokernel (docs/SYSCALLS.md).
 *
 * rax = number, arguments in rdi rsi rdx r10 r8 r9, then `syscall`.
 * rax >= 0 is success, rax < 0 is -error.  MAP and RELEASE also report in
 * rdx how many pages were done; those two stubs return both registers as a
 * struct xomb_result, which the SysV ABI returns in rax:rdx - exactly where
 * the kernel leaves them, so the stubs are three instructions.
 */
#pragma once
#include <stdint.h>
#include "xomb_abi.h"

struct xomb_result {
    long rv;            /* rax: >= 0 success, -XOMB_E... on failure */
    unsigned long done; /* rdx: pages completed (MAP, RELEASE) */
};

long xomb_create(long as, uint64_t va, long level, uint64_t donor_va);
struct xomb_result xomb_map(long dst_as, uint64_t dst_va, long src_as, uint64_t src_va,
                            uint64_t n, uint64_t flags);
long xomb_as_create(uint64_t donor_va, uint64_t entry, long slot);
long xomb_yield(long as, uint64_t upcall, uint64_t arg0, uint64_t arg1);
struct xomb_result xomb_release(long as, uint64_t va, uint64_t n);

/* Any number, six arguments: for tests and for reflected-syscall emulation. */
struct xomb_result xomb_syscall6(long nr, uint64_t a0, uint64_t a1, uint64_t a2,
                                 uint64_t a3, uint64_t a4, uint64_t a5);

/* "EINVAL" for -XOMB_EINVAL, "OK" for >= 0, "E?" otherwise. */
const char *xomb_errname(long rv);
/* A sentence: "malformed argument", ... */
const char *xomb_strerror(long rv);
