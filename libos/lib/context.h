/* Saved contexts (setjmp/longjmp), see context.S. */
#pragma once
#include <stdint.h>

struct ctx {
    uint64_t rbx, rbp, r12, r13, r14, r15, rsp, rip;
};

/* Returns 0 when saving, the restore value (never 0) when jumped back to. */
int ctx_save(struct ctx *c) __attribute__((returns_twice));
__attribute__((noreturn)) void ctx_restore(struct ctx *c, int value);
