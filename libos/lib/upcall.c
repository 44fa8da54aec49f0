/* Upcall dispatch.  crt0.S puts us on an upcall stack and calls
 * upcall_dispatch(no, arg0, arg1, from_root) for everything but START.
 *
 * FAULT and SYSCALL come from the kernel with the interrupted registers in
 * the activation frame and in_upcall set: a registered handler may repair
 * the situation and we resume the context ourselves (resume.S).  A fault
 * inside the handler finds in_upcall still set and the kernel declares us
 * dead, so a broken handler cannot loop.
 *
 * EXIT, CHILD_ERROR and RESUME concern the process tree (process.c).
 */
#include "upcall.h"
#include "console.h"
#include "libos.h"
#include "process.h"
#include "syscall.h"
#include "thread.h"
#include "context.h"

static upcall_handler_t fault_handler;
static upcall_handler_t syscall_handler;

upcall_handler_t set_fault_handler(upcall_handler_t h)
{
    upcall_handler_t old = fault_handler;
    fault_handler = h;
    return old;
}

upcall_handler_t set_syscall_handler(upcall_handler_t h)
{
    upcall_handler_t old = syscall_handler;
    syscall_handler = h;
    return old;
}

static app_upcall_t app_handler;

void set_app_upcall_handler(app_upcall_t h)
{
    app_handler = h;
}

const char *vector_name(uint64_t v)
{
    static const char *const names[] = {
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#CSO",
        "#TS", "#NP", "#SS", "#GP", "#PF", "#15", "#MF", "#AC", "#MC", "#XM",
        "#VE", "#CP",
    };
    if (v == XOMB_VEC_SYSCALL)
        return "syscall";
    if (v < sizeof(names) / sizeof(names[0]))
        return names[v];
    return "#?";
}

/* Which CPU runs this upcall: each CPU has its own upcall stacks (crt0.S),
 * so the stack pointer says it.  (A global would be overwritten by another
 * CPU entering the same address space.)  Outside an upcall: the home CPU. */
extern char fault_stack_base[], proc_stack[];
uint64_t upcall_current_cpu(void)
{
    char *sp = (char *)__builtin_frame_address(0);
    uint64_t size = UPCALL_STACK_SIZE * XOMB_MAX_CPUS;
    if (sp >= fault_stack_base && sp < fault_stack_base + size)
        return (uint64_t)(sp - fault_stack_base) / UPCALL_STACK_SIZE;
    if (sp >= proc_stack && sp < proc_stack + size)
        return (uint64_t)(sp - proc_stack) / UPCALL_STACK_SIZE;
    return libos_home_cpu;
}
static struct ctx *volatile idle_waiter[XOMB_MAX_CPUS];
volatile uint64_t upcall_irq_pending;
static void (*donate_handler)(uint64_t cpu);

void set_donate_handler(void (*h)(uint64_t cpu)) { donate_handler = h; }

int cpu_wait_tick(uint64_t cpu)
{
    struct ctx c;
    if (cpu >= XOMB_MAX_CPUS)
        return -1;
    if (ctx_save(&c) == 0) {
        idle_waiter[cpu] = &c;
        xomb_yield(XOMB_AS_SELF, XOMB_UP_IDLE, 0, 0);
        idle_waiter[cpu] = 0;           /* only an error returns */
        return -1;
    }
    return 0;
}

void cpu_idle(void)
{
    for (;;)
        xomb_yield(XOMB_AS_SELF, XOMB_UP_IDLE, 0, 0);   /* returns only on error */
}

void cpu_unneeded(void)
{
    if (libos_is_root)
        cpu_idle();
    for (;;)
        xomb_yield(XOMB_AS_PARENT, XOMB_UP_GIVEBACK, 0, 0);
}

void upcall_dispatch(uint64_t no, uint64_t arg0, uint64_t arg1, uint64_t from_root,
                     uint64_t cpu)
{
    struct xomb_frame *f = UPCALL_FRAME_OF(cpu);
    if (f->in_upcall && f->rsp == 0)    /* caught at the entry stub: restart it */
        f->r9 = cpu;                    /* on this CPU's stacks (resume.S) */
    switch (no) {
    case XOMB_UP_TIMER:                 /* the root's tick */
        if (arg0)
            upcall_resume(f);
        __attribute__((fallthrough));
    case XOMB_UP_INTERRUPT:             /* a device interrupted our IDLE wait */
        if (no == XOMB_UP_INTERRUPT)
            __atomic_fetch_or(&upcall_irq_pending, arg0, __ATOMIC_SEQ_CST);
        if (cpu < XOMB_MAX_CPUS && idle_waiter[cpu]) {  /* woke a cpu_wait_tick() */
            struct ctx *w = idle_waiter[cpu];
            idle_waiter[cpu] = 0;
            ctx_restore(w, 1);
        }
        __attribute__((fallthrough));   /* woke from IDLE: a spare CPU again */
    case XOMB_UP_CPU:                   /* (root) a spare CPU: offer it down the tree */
        process_donate(cpu);
        cpu_idle();
    case XOMB_UP_DONATE:                /* our parent gives us a CPU */
        if (donate_handler)             /* the program's own use for it */
            donate_handler(cpu);
        thread_cpu_donated(cpu);        /* our threads use it (if we have any) */
        process_donate(cpu);            /* else the child we wait for */
        cpu_unneeded();
    case XOMB_UP_PREEMPT:               /* a tick took the CPU from a child: the */
        process_preempted(from_root, cpu);  /* scheduling decision is ours */
        break;
    case XOMB_UP_RESUME:                /* a preempted context waits in our frame */
        if (f->in_upcall && f->vector == XOMB_TIMER_VECTOR)
            upcall_resume(f);
        break;
    }

    if (no == XOMB_UP_FAULT || no == XOMB_UP_SYSCALL) {
        upcall_handler_t h = no == XOMB_UP_FAULT ? fault_handler : syscall_handler;
        /* LAB 3 BEGIN STUB: (void)h; */
        if (h && h(f))                  /* the program handled it: go back */
            upcall_resume(f);
        /* LAB 3 END */
        if (no == XOMB_UP_SYSCALL)
            printf("%s: unknown system call 0x%lx at rip 0x%lx\n", libos_name,
                   f->rax, f->rip);
        else
            printf("%s: unhandled %s (vector %lu) at rip 0x%lx, cr2 0x%lx, error 0x%lx\n",
                   libos_name, vector_name(f->vector), f->vector, f->rip, f->cr2, f->error);
        exit(128 + (int)f->vector);
    }
    if (no >= UPCALL_APP_MIN && app_handler)
        app_handler(no, arg0, arg1, from_root);
    process_upcall(no, arg0, arg1, from_root);
}
