/* Processes (see process.h). */
#include "process.h"
#include "spin.h"
#include "args.h"
#include "console.h"
#include "context.h"
#include "elf.h"
#include "initrd.h"
#include "libos.h"
#include "mem.h"
#include "string.h"
#include "upcall.h"
#include "vm.h"

/* Small initial pools: moving a page costs ~45 kernel instructions (on PVM,
 * emulated: ~30 us), so a child gets little and asks for more when it needs
 * it (UP_POOL, mem.h): memory policy stays in the parent. */
#define DEFAULT_CHILD_POOL 64
#define ROOT_CHILD_POOL_MAX 64          /* what init gives its shell to start with (MIN_POOL) */
#define ROOT_KEEP 256                   /* pages a parent keeps for itself */
#define CHILD_KEEP 16
#define POOL_EXTENTS 32                 /* 2 MiB slots of a child's pool we track */
#define MIN_POOL 64

struct proc {
    volatile int cpus_out;      /* CPUs we donated to it that it still holds */
    int used;
    int started;
    int finished;
    uint64_t root;              /* root phys, to recognise upcalls from it */
    uint64_t pool_pages;
    uint32_t pool_ext[POOL_EXTENTS];    /* pages given later into pool slot i (UP_POOL) */
    uint64_t rw_start, rw_pages;        /* its copy of the program's data */
    char name[32];
    struct proc_status st;
};

static struct proc procs[XOMB_MAX_HANDLES];
volatile int process_exiting;
int (*process_interrupt_check)(void);
static struct ctx wait_ctx;             /* where wait() continues */
static long waiting_for;                /* the handle wait() yielded to, or 0 */
static struct ctx resume_ctx;           /* where yield_to_parent() continues */
static int resume_armed;
static char errbuf[160];

const char *spawn_error(void) { return errbuf; }

const char *proc_name(long h)
{
    return (h >= 2 && h < XOMB_MAX_HANDLES && procs[h].used) ? procs[h].name : 0;
}

long slot_free(void)
{
    for (long h = 2; h < XOMB_MAX_HANDLES; h++)
        if (!vm_handle_root((unsigned)h) && !procs[h].used)
            return h;
    return -1;
}

/* --- building a child -------------------------------------------------- */

static long fail(long h, long rv, const char *what)
{
    snprintf(errbuf, sizeof(errbuf), "%s: %s", what, xomb_errname(rv));
    if (h > 0) {
        xomb_release(h, 0, 0);
        mem_forget_handle(h);
        procs[h].used = 0;
    }
    return rv < 0 ? rv : -XOMB_EINVAL;
}

/* Write the argv page in scratch and move it to the child. */
static long give_args(long h, char *const argv[], uint64_t pool_pages, uint64_t flags)
{
    long r = page_alloc_at(XOMB_AS_SELF, XOMB_SCRATCH_VA, XOMB_MAP_W);
    if (r < 0)
        return r;
    struct xomb_args *a = (struct xomb_args *)XOMB_SCRATCH_VA;
    memset(a, 0, PAGE_SIZE);
    a->magic = XARGS_MAGIC;
    a->host = (uint64_t)libos_host;
    a->pool_pages = pool_pages;
    a->initrd_size = libos_initrd_size;
    a->tsc_khz = libos_tsc_khz;
    a->flags = flags;
    a->ncpus = libos_ncpus;
    uint64_t off = sizeof(*a);
    int argc = 0;
    for (; argv && argv[argc] && argc < XARGS_MAX; argc++) {
        uint64_t len = strlen(argv[argc]) + 1;
        if (off + len > PAGE_SIZE)
            break;              /* (truncated: the page is full) */
        memcpy((char *)a + off, argv[argc], len);
        a->argv_off[argc] = (uint16_t)off;
        off += len;
    }
    a->argc = (uint64_t)argc;
    struct xomb_result m = xomb_map(h, XOMB_ARGS_VA, XOMB_AS_SELF, XOMB_SCRATCH_VA, 1,
                                    XOMB_MAP_W | XOMB_MAP_MOVE);
    if (m.rv < 0)
        page_free(XOMB_SCRATCH_VA);
    return m.rv;
}

/* Share n of our pages at va (same address) with the child, same rights. */
static long share_same(long h, uint64_t va, uint64_t n, uint64_t rights)
{
    for (uint64_t i = 0; i < n;) {
        uint64_t at = va + i * PAGE_SIZE;
        long r = mem_ensure_tables(h, at);
        if (r < 0)
            return r;
        uint64_t k = ((at | ((1UL << 21) - 1)) + 1 - at) / PAGE_SIZE;
        if (k > n - i)
            k = n - i;
        struct xomb_result m = xomb_map(h, at, XOMB_AS_SELF, at, k, rights);
        if (m.rv < 0)
            return m.rv;
        i += k;
    }
    return 0;
}

static uint64_t default_pool(uint64_t want)
{
    uint64_t keep = libos_is_root ? ROOT_KEEP : CHILD_KEEP;
    /* a child asks its parent first if it is short (UP_POOL) */
    uint64_t have = pool_reserve((want ? want : DEFAULT_CHILD_POOL) + keep);
    uint64_t spare = have > keep ? have - keep : 0;
    if (!want) {
        if (libos_is_root)
            want = spare > ROOT_CHILD_POOL_MAX ? ROOT_CHILD_POOL_MAX : spare;
        else
            want = spare > DEFAULT_CHILD_POOL ? DEFAULT_CHILD_POOL : spare;
    }
    if (want > spare)
        want = spare;
    return want;
}

long spawn_with(const char *name, char *const argv[], const struct spawn_opts *o)
{
    const void *image;
    uint64_t size, entry;
    if (initrd_find(name, &image, &size) < 0) {
        snprintf(errbuf, sizeof(errbuf), "%s: no such program in the boot archive", name);
        return -XOMB_EINVAL;
    }
    if (elf_check(image, size, &entry, errbuf, sizeof(errbuf)) < 0)
        return -XOMB_EINVAL;
    uint64_t pool_pages = default_pool(o ? o->pool_pages : 0);
    if (pool_pages < MIN_POOL) {
        snprintf(errbuf, sizeof(errbuf), "not enough memory for %s (%lu pages free)", name,
                 pool_free_pages());
        return -LIBOS_ENOMEM;
    }

    long h = slot_free();
    if (h < 0) {
        snprintf(errbuf, sizeof(errbuf), "no free handle slot");
        return -XOMB_EEXIST;
    }
    uint64_t donor = pool_find(XOMB_MAP_W);
    if (!donor)
        return fail(0, -LIBOS_ENOMEM, "address space root");
    long r = xomb_as_create(donor, entry, h);
    if (r < 0)
        return fail(0, r, "as_create");
    pool_consumed(donor);
    mem_forget_handle(h);
    proc_adopt(h, name, pool_pages);

    char lerr[128];
    struct elf_info info;
    if (elf_load(h, image, size, &info, lerr, sizeof(lerr)) < 0) {
        long rv = fail(h, -XOMB_EINVAL, "load");
        snprintf(errbuf, sizeof(errbuf), "%s: %s", name, lerr);
        return rv;
    }
    procs[h].rw_start = info.rw_start;
    procs[h].rw_pages = info.rw_pages;
    /* Stack (read/write, never executable), activation frame, arguments. */
    uint64_t stack = XOMB_STACK_TOP - XOMB_STACK_PAGES * PAGE_SIZE;
    if ((r = page_alloc_range(h, stack, XOMB_STACK_PAGES, XOMB_MAP_W)) < 0)
        return fail(h, r, "stack");
    if ((r = page_alloc_at(h, XOMB_UPCALL_VA, XOMB_MAP_W)) < 0)
        return fail(h, r, "activation frame");
    if ((r = give_args(h, argv, pool_pages, o ? o->flags : libos_arg_flags)) < 0)
        return fail(h, r, "argv page");
    /* The console is shared, not given: everybody writes the same rings. */
    if (libos_host != XOMB_HOST_QEMU) {
        static const uint64_t dev[] = { XOMB_CONSOLE_OUT_VA, XOMB_CONSOLE_IN_VA,
                                        XOMB_CONSOLE_BELL_VA };
        for (unsigned i = 0; i < 3; i++)
            if (vm_mapped(dev[i]) && (r = share_same(h, dev[i], 1, XOMB_MAP_W)) < 0)
                return fail(h, r, "console");
    }
    /* The boot archive, read-only, so the child can start programs too. */
    if (libos_initrd_size) {
        uint64_t n = (libos_initrd_size + PAGE_SIZE - 1) / PAGE_SIZE;
        if ((r = share_same(h, XOMB_INITRD_VA, n, 0)) < 0)
            return fail(h, r, "boot archive");
    }
    /* Its own memory. */
    r = pool_give(h, XOMB_POOL_VA, pool_pages);
    if (r < 0)
        return fail(h, r, "pool");
    if ((uint64_t)r < pool_pages)
        return fail(h, -LIBOS_ENOMEM, "pool");
    return h;
}

long spawn(const char *name, char *const argv[])
{
    return spawn_with(name, argv, 0);
}

/* --- running and ending a child ---------------------------------------- */

/* UP_POOL: child h wants n pages at dst (the next 2 MiB slot of its pool). */
static uint64_t pool_req_n, pool_req_dst;

static uint64_t pool_serve(long h, uint64_t n, uint64_t dst)
{
    uint64_t slot = (dst - XOMB_POOL_VA) >> 21;
    if (n == 0 || n > 512 || dst < XOMB_POOL_VA || (dst & ((1UL << 21) - 1))
        || slot >= POOL_EXTENTS || procs[h].pool_ext[slot])
        return 0;
    pool_reserve(n + (libos_is_root ? ROOT_KEEP : CHILD_KEEP));
    long r = pool_give(h, dst, n);
    if (r <= 0)
        return 0;
    procs[h].pool_ext[slot] = (uint32_t)r;
    return (uint64_t)r;
}

int proc_run(long h, uint64_t upcall, uint64_t arg0, uint64_t arg1, long *yield_rv)
{
    if (h < 2 || h >= XOMB_MAX_HANDLES || !procs[h].used)
        return -XOMB_EBADH;
    struct proc *p = &procs[h];
    /* What to send next; changed after ctx_save, so kept in memory. */
    static uint64_t next_upcall, next_arg0, next_arg1;
    next_upcall = upcall;
    next_arg0 = arg0;
    next_arg1 = arg1;
    if (yield_rv)
        *yield_rv = 0;
    while (!p->finished) {
        if (ctx_save(&wait_ctx) == 0) {
            waiting_for = h;
            long r = xomb_yield(h, next_upcall, next_arg0, next_arg1);
            waiting_for = 0;            /* only errors return */
            if (yield_rv)
                *yield_rv = r;
            return 0;
        }
        waiting_for = 0;
        next_upcall = XOMB_UP_RESUME;   /* it gave the CPU back without exiting */
        next_arg0 = next_arg1 = 0;
        if (pool_req_n) {               /* ... asking for pages: served here, on our
                                         * own stack, where we may ask our parent */
            next_arg0 = pool_serve(h, pool_req_n, pool_req_dst);
            pool_req_n = 0;
        }
    }
    return 1;
}

void proc_adopt(long h, const char *name, uint64_t pool_pages)
{
    struct proc *p = &procs[h];
    memset(p, 0, sizeof(*p));
    p->used = 1;
    p->root = vm_handle_root((unsigned)h);
    p->pool_pages = pool_pages;
    strncpy(p->name, name, sizeof(p->name) - 1);
}

int wait_status(long h, struct proc_status *st, int destroy)
{
    if (h < 2 || h >= XOMB_MAX_HANDLES || !procs[h].used)
        return -XOMB_EBADH;
    struct proc *p = &procs[h];
    if (!p->finished) {
        long r;
        uint64_t up = p->started ? XOMB_UP_RESUME : XOMB_UP_START;
        p->started = 1;
        if (proc_run(h, up, 0, 0, &r) == 0) {
            printf("[%s] cannot run %s: %s\n", libos_name, p->name, xomb_errname(r));
            p->st.status = 126;
            p->finished = 1;
        }
    }
    int status = p->st.status;
    if (st)
        *st = p->st;
    if (destroy)
        proc_destroy(h);
    return status;
}

int wait(long h)
{
    return wait_status(h, 0, 1);
}

long proc_destroy(long h)
{
    if (h < 2 || h >= XOMB_MAX_HANDLES)
        return -XOMB_EBADH;
    struct proc *p = &procs[h];
    while (p->used && p->cpus_out)      /* CPUs we donated must come back first */
        cpu_relax();
    if (p->used && !libos_is_root) {
        /* Take back what we gave before it goes home to the root. */
        pool_reclaim(h, XOMB_POOL_VA, p->pool_pages);
        for (int i = 0; i < POOL_EXTENTS; i++)
            if (p->pool_ext[i])
                pool_reclaim(h, XOMB_POOL_VA + ((uint64_t)i << 21), p->pool_ext[i]);
        pool_reclaim(h, XOMB_STACK_TOP - XOMB_STACK_PAGES * PAGE_SIZE, XOMB_STACK_PAGES);
        pool_reclaim(h, XOMB_UPCALL_VA, 2);     /* activation frame, argv page */
        pool_reclaim(h, p->rw_start, p->rw_pages);      /* its data and bss */
    }
    struct xomb_result r = xomb_release(h, 0, 0);
    for (long spins = 0; r.rv == -XOMB_EBUSY && spins < 100000000; spins++) {
        cpu_relax();                    /* it is still leaving another CPU */
        r = xomb_release(h, 0, 0);
    }
    mem_forget_handle(h);
    memset(p, 0, sizeof(*p));
    return r.rv;
}

static struct proc *find_by_root(uint64_t root)
{
    for (long h = 2; h < XOMB_MAX_HANDLES; h++)
        if (procs[h].used && procs[h].root == root)
            return &procs[h];
    return 0;
}

long yield_and_resume(long h, uint64_t upcall, uint64_t arg0, uint64_t arg1)
{
    if (ctx_save(&resume_ctx) == 0) {
        resume_armed = 1;
        long r = xomb_yield(h, upcall, arg0, arg1);
        resume_armed = 0;
        return r;
    }
    return 0;
}

long yield_to_parent(uint64_t upcall, uint64_t arg0, uint64_t arg1)
{
    return yield_and_resume(XOMB_AS_PARENT, upcall, arg0, arg1);
}

/* A timer tick took the CPU from our child (its context is in its frame):
 * the scheduling decision is ours.  On our home CPU, a pending interrupt
 * (Ctrl-C for the shell) kills the child we wait for; a child that already
 * exited gets no more CPU; otherwise it gets the CPU straight back. */
void process_preempted(uint64_t child_root, uint64_t cpu)
{
    struct proc *p = find_by_root(child_root);
    long h = p ? p - procs : 0;
    if (!p) {
        printf("[%s] preempted an unknown address space 0x%lx\n", libos_name, child_root);
        return;
    }
    if (cpu == libos_home_cpu && h == waiting_for && process_interrupt_check &&
        process_interrupt_check()) {
        p->finished = 1;
        p->st.status = 130;
        p->st.killed = 1;
        ctx_restore(&wait_ctx, 1);
    }
    if (p->finished) {                  /* it exited or died on another CPU */
        if (cpu == libos_home_cpu && h == waiting_for)
            ctx_restore(&wait_ctx, 1);
        if (cpu != libos_home_cpu)
            __atomic_fetch_sub(&p->cpus_out, 1, __ATOMIC_SEQ_CST);
        cpu_unneeded();
    }
    xomb_yield(h, XOMB_UP_RESUME, 0, 0);
}

/* We were given a CPU and run no threads: pass it to the child we wait for. */
void process_donate(uint64_t cpu)
{
    /* LAB 6 BEGIN */
    long h = waiting_for;
    if (h < 2 || h >= XOMB_MAX_HANDLES || !procs[h].used || procs[h].finished)
        return;
    __atomic_fetch_add(&procs[h].cpus_out, 1, __ATOMIC_SEQ_CST);
    xomb_yield(h, XOMB_UP_DONATE, cpu, 0);
    __atomic_fetch_sub(&procs[h].cpus_out, 1, __ATOMIC_SEQ_CST);   /* it failed */
    /* LAB 6 END */
}

/* A waiting context (wait(), yield_and_resume()) lives on our home CPU and
 * is only ever resumed there: an event that reaches us on a CPU we were
 * donated is left for the home CPU (it sees `finished` at its next tick) and
 * this CPU goes back. */
static void home_restore(struct ctx *c, int value)
{
    if (upcall_cpu != libos_home_cpu) {
        cpu_unneeded();
    }
    ctx_restore(c, value);
}

void process_upcall(uint64_t no, uint64_t arg0, uint64_t arg1, uint64_t from_root)
{
    struct proc *p = find_by_root(from_root);
    switch (no) {
    case XOMB_UP_EXIT:
    case XOMB_UP_CHILD_ERROR:
        if (!p) {
            printf("[%s] %s from unknown address space 0x%lx ignored\n", libos_name,
                   no == XOMB_UP_EXIT ? "exit" : "child error", from_root);
            break;
        }
        p->finished = 1;
        p->st.arg1 = arg1;
        if (no == XOMB_UP_EXIT) {
            p->st.status = (int)(uint32_t)arg0;
        } else {
            p->st.died = 1;
            p->st.vector = arg0;
            p->st.addr = arg1;
            p->st.status = 128 + (int)arg0;
            printf("[%s] child %s died: %s at 0x%lx\n", libos_name, p->name,
                   vector_name(arg0), arg1);
        }
        if (upcall_cpu != libos_home_cpu) {
            /* It ended on a CPU we donated (a thread died there): our waiting
             * context belongs to the home CPU, which learns of it at its next
             * tick (process_preempted).  This CPU goes back. */
            __atomic_fetch_sub(&p->cpus_out, 1, __ATOMIC_SEQ_CST);
            cpu_unneeded();
        }
        if (waiting_for)
            home_restore(&wait_ctx, 1);
        break;
    case XOMB_UP_POOL:
        if (!p)
            break;
        if (waiting_for == p - procs) {  /* serve it in wait(), on our own stack */
            pool_req_n = arg0 ? arg0 : 1;
            pool_req_dst = arg1;
            home_restore(&wait_ctx, 4);
        }
        /* Not waiting for it (it was yielded to directly): serve from here, on
         * the upcall stack, so without asking our own parent. */
        pool_refill_block(1);
        uint64_t got = pool_serve(p - procs, arg0, arg1);
        pool_refill_block(0);
        for (;;)
            xomb_yield(p - procs, XOMB_UP_RESUME, got, 0);
    case XOMB_UP_GIVEBACK:              /* a child does not need a CPU we gave */
        if (p)
            __atomic_fetch_sub(&p->cpus_out, 1, __ATOMIC_SEQ_CST);
        cpu_unneeded();
    case XOMB_UP_RESUME:
        if (resume_armed) {
            resume_armed = 0;
            home_restore(&resume_ctx, 1);
        }
        if (waiting_for)                /* a child gave the CPU back: run it on */
            home_restore(&wait_ctx, 2);
        break;
    default:
        printf("[%s] unexpected upcall %lu (0x%lx, 0x%lx) from 0x%lx\n", libos_name, no,
               arg0, arg1, from_root);
        break;
    }
    if (waiting_for)
        home_restore(&wait_ctx, 3);
    /* Nothing to go back to. */
    printf("[%s] nothing to resume after upcall %lu; exiting\n", libos_name, no);
    exit(125);
}
