/* Upcalls: how the kernel (and other libOSes) enter us (upcall.c, crt0.S). */
#pragma once
#include <stdint.h>
#include "xomb_abi.h"

/* The activation frame the kernel fills on a fault, a reflected syscall or a
 * timer tick: one per CPU (the kernel passes the CPU's index in r9). */
#define UPCALL_FRAME_OF(cpu) \
    ((struct xomb_frame *)(XOMB_UPCALL_VA + (uint64_t)(cpu) * XOMB_FRAME_STRIDE))
#define UPCALL_FRAME UPCALL_FRAME_OF(upcall_cpu)
#define upcall_cpu upcall_current_cpu()
#define UPCALL_STACK_SIZE 8192  /* crt0.S: per CPU and kind */
uint64_t upcall_current_cpu(void);      /* the CPU running this upcall */

/* A handler returns 1 to resume the interrupted context (after fixing
 * whatever it wanted: map a page, set frame->rax, move frame->rip ...) or
 * 0 to decline, which kills the process with status 128 + vector. */
typedef int (*upcall_handler_t)(struct xomb_frame *f);

upcall_handler_t set_fault_handler(upcall_handler_t h);     /* returns the old one */
upcall_handler_t set_syscall_handler(upcall_handler_t h);

/* Upcall numbers >= UPCALL_APP_MIN belong to the program (a protocol between
 * its own address spaces): they go to this handler; it never returns. */
#define UPCALL_APP_MIN 32
typedef void (*app_upcall_t)(uint64_t no, uint64_t arg0, uint64_t arg1, uint64_t from_root);
void set_app_upcall_handler(app_upcall_t h);

/* "#PF", "#GP", ... ; "syscall" for XOMB_VEC_SYSCALL. */
const char *vector_name(uint64_t vector);

__attribute__((noreturn)) void upcall_dispatch(uint64_t no, uint64_t arg0, uint64_t arg1,
                                               uint64_t from_root, uint64_t cpu);
/* resume.S: restore a frame's context in user mode. */
__attribute__((noreturn)) void upcall_resume(struct xomb_frame *f);
/* This CPU has nothing to run: halt it until the next tick (IDLE). */
__attribute__((noreturn)) void cpu_idle(void);
/* Wait for this CPU's next tick or a device interrupt without burning it
 * (YIELD IDLE): returns 0 when woken, -1 if the kernel refused. */
int cpu_wait_tick(uint64_t cpu);
/* Device interrupts received (bit i = device page i); a driver clears its bit. */
extern volatile uint64_t upcall_irq_pending;
/* A program's own use for a CPU its parent donates (DONATE upcall); if the
 * handler returns, the default applies (threads, then our waited-for child). */
void set_donate_handler(void (*h)(uint64_t cpu));
/* We do not need this CPU: give it back to our parent (the root idles it). */
__attribute__((noreturn)) void cpu_unneeded(void);
