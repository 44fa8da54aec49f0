/* User-level threads, mutexes and condition variables (thread.c).
 *
 * The kernel knows nothing of threads: a process runs its threads on every
 * CPU its parent gives it (DONATE upcalls), each CPU with its own run queue,
 * stealing from the others when its own is empty.
 */
#pragma once
#include <stdint.h>
#include "spin.h"
#include "context.h"

struct thread;

struct mutex {
    spinlock_t lock;
    volatile int locked;
    struct thread *head, *tail;         /* waiters */
};

struct cond {
    spinlock_t lock;
    struct thread *head, *tail;
};

#define MUTEX_INIT {{0}, 0, 0, 0}
#define COND_INIT {{0}, 0, 0}

/* Start fn(arg) on some CPU; returns the thread or 0 (out of memory). */
struct thread *thread_create(void *(*fn)(void *), void *arg);
/* Wait for t to finish and return its result (the caller's CPU runs others meanwhile). */
void *thread_join(struct thread *t);
/* Let other runnable threads run. */
void thread_yield(void);
/* The CPU index the calling thread runs on. */
int thread_cpu(void);

void mutex_lock(struct mutex *m);
void mutex_unlock(struct mutex *m);
void cond_wait(struct cond *c, struct mutex *m);
void cond_signal(struct cond *c);
void cond_broadcast(struct cond *c);

/* The process was given a CPU (DONATE): run threads on it while there are
 * any; when there are none, the CPU goes back to the parent.  Returns 0 at
 * once (and does nothing) if the process uses no threads. */
int thread_cpu_donated(uint64_t cpu);
/* Threads in use (thread_create was called). */
extern volatile int thread_active;
