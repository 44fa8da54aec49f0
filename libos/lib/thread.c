/* thread.c - user-level threads on every CPU the process is given.
 *
 * A thread is a stack and a saved context (struct ctx, context.S).  Each CPU
 * that runs this process runs a scheduler loop on a small stack of its own:
 * take a thread from this CPU's run queue (or steal one from another CPU's),
 * switch to it, and when it switches back (it yielded, blocked or finished)
 * take the next.  A CPU with nothing to run goes back to the parent (GIVEBACK)
 * unless it is the process's home CPU (the one its parent runs it on), which
 * waits for work.
 *
 * Races: a thread that blocks is put on a wait queue *before* it has left its
 * CPU, so a waker on another CPU may make it runnable while it is still
 * running.  `on_cpu` closes that window: a scheduler dispatches a thread only
 * once the CPU it ran on has switched away from it.
 *
 * Finding ourselves: thread stacks are THREAD_STACK-aligned with the struct
 * thread at the base, so the current thread is rsp rounded down; the main
 * thread is the one on the program's main stack.
 */
#include "thread.h"
#include "libos.h"
#include "mem.h"
#include "process.h"
#include "syscall.h"
#include "upcall.h"
#include "console.h"

#define THREAD_STACK (16 * 1024)
#define THREADS_VA 0x200000000ULL       /* thread stacks, THREAD_STACK apart */
#define MAX_THREADS 256
#define RUNQ 256                        /* a power of two */
#define SCHED_STACK 8192

enum { RUNNABLE, RUNNING, BLOCKED, DONE };

struct thread {
    struct ctx ctx;
    void *(*fn)(void *);
    void *arg, *ret;
    volatile int state;
    volatile int on_cpu;                /* its CPU has not switched away yet */
    int requeue;                        /* it yielded: its CPU queues it again */
    int cpu;                            /* the CPU whose loop runs it */
    spinlock_t lock;                    /* state, joiner */
    struct thread *next;                /* wait queues */
    struct thread *joiner;
};

struct runq {
    spinlock_t lock;
    unsigned head, tail;
    struct thread *q[RUNQ];
};

volatile int thread_active;
static struct thread main_thread;
static struct runq runq[XOMB_MAX_CPUS];
static struct ctx sched_ctx[XOMB_MAX_CPUS];
static struct thread *volatile running[XOMB_MAX_CPUS];
static spinlock_t create_lock;
static int nthreads;
static char sched_stack[XOMB_MAX_CPUS][SCHED_STACK] __attribute__((aligned(16)));

static struct thread *self(void)
{
    uint64_t sp = (uint64_t)__builtin_frame_address(0);
    uint64_t lo = XOMB_STACK_TOP - XOMB_STACK_PAGES * 4096ULL;
    if (sp >= lo && sp < XOMB_STACK_TOP)
        return &main_thread;
    return (struct thread *)(sp & ~(uint64_t)(THREAD_STACK - 1));
}

int thread_cpu(void) { return self()->cpu; }

static void push(int cpu, struct thread *t)
{
    struct runq *r = &runq[cpu];
    spin_lock(&r->lock);
    r->q[r->tail++ % RUNQ] = t;
    spin_unlock(&r->lock);
}

static struct thread *pop_head(struct runq *r)
{
    struct thread *t = 0;
    spin_lock(&r->lock);
    if (r->head != r->tail)
        t = r->q[r->head++ % RUNQ];
    spin_unlock(&r->lock);
    return t;
}

/* Take a thread from the other end of another CPU's queue.  The main thread
 * is never stolen: it stays on the home CPU, where our parent waits for it. */
static struct thread *steal(struct runq *r)
{
    struct thread *t = 0;
    spin_lock(&r->lock);
    if (r->head != r->tail && r->q[(r->tail - 1) % RUNQ] != &main_thread)
        t = r->q[--r->tail % RUNQ];
    spin_unlock(&r->lock);
    return t;
}

static struct thread *pick(int cpu)
{
    struct thread *t = pop_head(&runq[cpu]);
    for (uint64_t i = 1; !t && i < libos_ncpus; i++)
        t = steal(&runq[(cpu + i) % libos_ncpus]);
    return t;
}

static void wake(struct thread *t)
{
    t->state = RUNNABLE;
    push(t->cpu, t);
}

/* After a switch back to the loop: the thread that ran leaves the CPU.  Only
 * a thread that yielded is queued again here; a blocked one is queued by its
 * waker, which may already have done so on another CPU (so its state says
 * nothing about who queues it: deciding from it once queued threads twice). */
static void switched_out(int cpu)
{
    struct thread *was = running[cpu];
    running[cpu] = 0;
    if (!was)
        return;
    int requeue = was->requeue;
    was->requeue = 0;
    __atomic_store_n(&was->on_cpu, 0, __ATOMIC_RELEASE);
    if (requeue)
        push(cpu, was);
}

/* Run t on this CPU until it switches back. */
static __attribute__((noinline)) void dispatch(int cpu, struct thread *t)
{
    while (t->on_cpu)                           /* still leaving another CPU */
        cpu_relax();
    t->cpu = cpu;
    t->state = RUNNING;
    t->on_cpu = 1;
    running[cpu] = t;
    if (ctx_save(&sched_ctx[cpu]) == 0)
        ctx_restore(&t->ctx, 1);
}

/* The scheduler loop of one CPU, on that CPU's scheduler stack (which is how
 * it knows its CPU); never returns. */
static __attribute__((noreturn)) void sched_loop(void)
{
    int cpu = (int)(((char *)__builtin_frame_address(0) - sched_stack[0]) / SCHED_STACK);
    switched_out(cpu);                          /* the thread that started us */
    for (;;) {
        struct thread *t = pick(cpu);
        if (!t) {
            if ((uint64_t)cpu != libos_home_cpu || process_exiting)
                xomb_yield(XOMB_AS_PARENT, XOMB_UP_GIVEBACK, 0, 0);
            cpu_relax();
            continue;
        }
        dispatch(cpu, t);
        switched_out(cpu);                      /* t yielded, blocked or finished */
    }
}

static volatile int loop_started[XOMB_MAX_CPUS];

/* Start this CPU's scheduler loop on its own stack. */
static __attribute__((noreturn)) void sched_enter(int cpu)
{
    struct ctx c = {0};
    loop_started[cpu] = 1;
    c.rsp = (uint64_t)(sched_stack[cpu] + SCHED_STACK) - 8;
    c.rip = (uint64_t)sched_loop;
    ctx_restore(&c, 1);
}

/* Switch from the calling thread to its CPU's scheduler loop (state already
 * set by the caller); returns when the thread is dispatched again. */
static void to_sched(struct thread *t)
{
    if (ctx_save(&t->ctx) != 0)
        return;
    running[t->cpu] = t;
    if (!loop_started[t->cpu])                  /* e.g. the main thread's first switch */
        sched_enter(t->cpu);
    ctx_restore(&sched_ctx[t->cpu], 1);
}

static __attribute__((noreturn)) void trampoline(void)
{
    struct thread *t = self();
    t->ret = t->fn(t->arg);
    spin_lock(&t->lock);
    t->state = DONE;
    struct thread *j = t->joiner;
    spin_unlock(&t->lock);
    if (j)
        wake(j);
    to_sched(t);
    for (;;)
        ;
}

struct thread *thread_create(void *(*fn)(void *), void *arg)
{
    spin_lock(&create_lock);
    if (!thread_active) {
        main_thread.cpu = (int)libos_home_cpu;
        main_thread.state = RUNNING;
        main_thread.on_cpu = 1;
        thread_active = 1;
    }
    int id = nthreads < MAX_THREADS ? nthreads++ : -1;
    uint64_t base = THREADS_VA + (uint64_t)id * THREAD_STACK;
    int ok = id >= 0;
    for (uint64_t off = 0; ok && off < THREAD_STACK; off += 4096)
        ok = page_alloc_at(XOMB_AS_SELF, base + off, XOMB_MAP_W) >= 0;
    spin_unlock(&create_lock);
    if (!ok)
        return 0;
    struct thread *t = (struct thread *)base;
    t->fn = fn;
    t->arg = arg;
    t->ctx.rsp = base + THREAD_STACK - 8;       /* as if called: rsp+8 aligned */
    t->ctx.rip = (uint64_t)trampoline;
    t->cpu = (int)(id % libos_ncpus);           /* spread; idle CPUs steal */
    wake(t);
    return t;
}

void *thread_join(struct thread *t)
{
    /* LAB 6 BEGIN */
    struct thread *me = self();
    spin_lock(&t->lock);
    if (t->state != DONE) {
        t->joiner = me;
        me->state = BLOCKED;
        spin_unlock(&t->lock);
        to_sched(me);
    } else {
        spin_unlock(&t->lock);
    }
    /* LAB 6 END */
    return t->ret;
}

void thread_yield(void)
{
    struct thread *me = self();
    if (!thread_active)
        return;
    me->state = RUNNABLE;
    me->requeue = 1;
    to_sched(me);
}

static void enqueue(struct thread **head, struct thread **tail, struct thread *t)
{
    t->next = 0;
    if (*tail)
        (*tail)->next = t;
    else
        *head = t;
    *tail = t;
}

static struct thread *dequeue(struct thread **head, struct thread **tail)
{
    struct thread *t = *head;
    if (t && !(*head = t->next))
        *tail = 0;
    return t;
}

void mutex_lock(struct mutex *m)
{
    for (;;) {
        spin_lock(&m->lock);
        if (!m->locked) {
            m->locked = 1;
            spin_unlock(&m->lock);
            return;
        }
        struct thread *me = self();
        enqueue(&m->head, &m->tail, me);
        me->state = BLOCKED;
        spin_unlock(&m->lock);
        to_sched(me);
    }
}

void mutex_unlock(struct mutex *m)
{
    spin_lock(&m->lock);
    m->locked = 0;
    struct thread *t = dequeue(&m->head, &m->tail);
    spin_unlock(&m->lock);
    if (t)
        wake(t);
}

void cond_wait(struct cond *c, struct mutex *m)
{
    struct thread *me = self();
    spin_lock(&c->lock);
    enqueue(&c->head, &c->tail, me);
    me->state = BLOCKED;
    mutex_unlock(m);
    spin_unlock(&c->lock);
    to_sched(me);
    mutex_lock(m);
}

void cond_signal(struct cond *c)
{
    spin_lock(&c->lock);
    struct thread *t = dequeue(&c->head, &c->tail);
    spin_unlock(&c->lock);
    if (t)
        wake(t);
}

void cond_broadcast(struct cond *c)
{
    spin_lock(&c->lock);
    struct thread *t = c->head;
    c->head = c->tail = 0;
    spin_unlock(&c->lock);
    while (t) {
        struct thread *n = t->next;
        wake(t);
        t = n;
    }
}

int thread_cpu_donated(uint64_t cpu)
{
    if (!thread_active || cpu >= XOMB_MAX_CPUS)
        return 0;
    running[cpu] = 0;
    sched_enter((int)cpu);
}
