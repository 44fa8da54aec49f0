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

uint64_t upcall_cpu;

void cpu_idle(void)
{
    for (;;)
        xomb_yield(XOMB_AS_SELF, XOMB_UP_IDLE, 0, 0);   /* returns only on error */
}

void upcall_dispatch(uint64_t no, uint64_t arg0, uint64_t arg1, uint64_t from_root,
                     uint64_t cpu)
{
    struct xomb_frame *f = UPCALL_FRAME_OF(cpu);

    upcall_cpu = cpu;
    if (f->in_upcall && f->rsp == 0)    /* caught at the entry stub: restart it */
        f->r9 = cpu;                    /* on this CPU's stacks (resume.S) */
    switch (no) {
    case XOMB_UP_TIMER:                 /* the root's tick: nothing to schedule yet */
        if (arg0)
            upcall_resume(f);
        cpu_idle();                     /* woke from IDLE */
    case XOMB_UP_CPU:                   /* another CPU arrived: no work for it yet */
        cpu_idle();
    case XOMB_UP_PREEMPT:               /* a tick took the CPU from a child: the */
        process_preempted(from_root);   /* scheduling decision is ours */
        break;
    case XOMB_UP_RESUME:                /* a preempted context waits in our frame */
        if (f->in_upcall && f->vector == XOMB_TIMER_VECTOR)
            upcall_resume(f);
        break;
    }

    if (no == XOMB_UP_FAULT || no == XOMB_UP_SYSCALL) {
        upcall_handler_t h = no == XOMB_UP_FAULT ? fault_handler : syscall_handler;
        if (h && h(f))
            upcall_resume(f);
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
