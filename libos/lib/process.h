/* Processes: address spaces we create, run and destroy (process.c).
 *
 * There is no process table in the kernel, only our handle slots (PML4
 * entries 256 + h).  This file keeps the libOS's own notes about each child
 * (name, pool size, how it ended) next to the slot.
 *
 * Running a child is a yield: the CPU goes to the child and comes back to us
 * as an upcall (EXIT from the child, CHILD_ERROR from the kernel), which
 * jumps back into wait() through a saved context.
 */
#pragma once
#include <stdint.h>

struct spawn_opts {
    uint64_t pool_pages;        /* spare frames for the child (0: a default) */
    uint64_t flags;             /* ARGS_F_* to pass in the argv page */
};

struct proc_status {
    int status;                 /* exit status, or 128 + vector */
    int died;                   /* 1 if the kernel reported CHILD_ERROR */
    int killed;                 /* 1 if we killed it (an interrupt, Ctrl-C) */
    uint64_t vector, addr;      /* ... with these */
    uint64_t arg1;              /* EXIT's second argument (a libOS extra) */
};

/* Create a child running program `name` from the boot archive with argv
 * (NULL-terminated; argv[0] should be the name).  Returns the handle
 * (2..127) or a negative error; spawn_error() says why in words. */
long spawn(const char *name, char *const argv[]);
long spawn_with(const char *name, char *const argv[], const struct spawn_opts *o);
const char *spawn_error(void);

/* Run the child until it exits or dies, then destroy it (its memory comes
 * back to us).  Returns the status. */
int wait(long h);
/* Same, with details; destroy = 0 leaves the dead child in place for the
 * caller to inspect and then proc_destroy(). */
int wait_status(long h, struct proc_status *st, int destroy);
/* Take back what we gave (pool, stack), then RELEASE(h, 0, 0). */
long proc_destroy(long h);

/* A free handle slot (2..127), or -1.  Reads our own PML4 slots. */
long slot_free(void);
/* What we call a child (its program name), or NULL. */
const char *proc_name(long h);

/* Lower level, for tests: note a bare address space (made with
 * xomb_as_create) as our child, so its upcalls are recognised. */
void proc_adopt(long h, const char *name, uint64_t pool_pages);
/* Yield to child h with `upcall` and run it until it exits or dies: 1.
 * If the yield itself fails: 0, and *yield_rv = the error. */
int proc_run(long h, uint64_t upcall, uint64_t arg0, uint64_t arg1, long *yield_rv);
/* Yield to any handle and continue here when someone sends us RESUME
 * (0), or return the yield's error. */
long yield_and_resume(long h, uint64_t upcall, uint64_t arg0, uint64_t arg1);

/* Yield to our parent with `upcall` and continue when it sends RESUME. */
long yield_to_parent(uint64_t upcall, uint64_t arg0, uint64_t arg1);

__attribute__((noreturn)) void process_upcall(uint64_t no, uint64_t arg0, uint64_t arg1,
                                              uint64_t from_root);

/* A tick preempted our child whose root is child_root (PREEMPT upcall). */
void process_preempted(uint64_t child_root, uint64_t cpu);
/* We were given a CPU (DONATE, or the root's spare CPUs): pass it on to the
 * child we wait for; returns if there is none. */
void process_donate(uint64_t cpu);
/* Set by exit(): our other CPUs leave (thread.c gives them back). */
extern volatile int process_exiting;
/* If set, called on each tick that preempts the child we wait for; a true
 * return kills that child (the shell uses it for Ctrl-C). */
extern int (*process_interrupt_check)(void);
