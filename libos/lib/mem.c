/* The page allocator (see mem.h). */
#include "mem.h"
#include "libos.h"
#include "process.h"
#include "string.h"
#include "vm.h"

#define PT_SPAN (1UL << 21)             /* one page table maps 2 MiB */
#define PT_PAGES 512

struct pool {
    uint64_t base, end;                 /* VA range [base, end), page aligned */
    uint64_t cursor;                    /* where the next search for a page starts */
    uint64_t free_cursor;               /* where the next search for a hole starts */
    uint64_t count;                     /* pages in the pool */
    int root;                           /* the window: type-check frames */
};

static struct pool pool;

/* --- scanning the pool ------------------------------------------------- */

/* Does the pool page with entry e at va qualify for `rights`? */
static int usable(uint64_t e, uint64_t rights)
{
    if (!(e & XOMB_PTE_P) || !pte_writable(e))
        return 0;
    if ((rights & XOMB_MAP_X) && !pte_executable(e))
        return 0;
    if (pool.root) {                    /* in the window: only free DATA frames */
        uint64_t pfn = PTE_ADDR_OF(e) >> 12;
        if (ft_type(pfn) != XOMB_FT_DATA || ft_count(pfn) != 1)
            return 0;
    }
    return 1;
}

/* First va in [from, to) whose entry satisfies want(): present pages (holes
 * = 0) or empty covered slots (holes = 1).  Skips unmapped tables whole. */
static uint64_t scan(uint64_t from, uint64_t to, int holes, uint64_t rights)
{
    uint64_t va = from;
    while (va < to) {
        int depth = vm_table_depth(va);
        if (depth < 3) {
            uint64_t span = depth == 0 ? (1UL << 39) : depth == 1 ? (1UL << 30) : PT_SPAN;
            va = (va & ~(span - 1)) + span;
            continue;
        }
        if (*vm_pde(va) & XOMB_PTE_PS) {          /* a large page: not ours to split */
            va = (va & ~(PT_SPAN - 1)) + PT_SPAN;
            continue;
        }
        uint64_t stop = (va & ~(PT_SPAN - 1)) + PT_SPAN;
        if (stop > to)
            stop = to;
        for (; va < stop; va += PAGE_SIZE) {
            uint64_t e = *vm_pt_entry(va);
            if (holes ? !(e & XOMB_PTE_P) : usable(e, rights))
                return va;
        }
    }
    return 0;
}

static uint64_t pool_scan(uint64_t rights)
{
    if (!pool.count)
        return 0;
    uint64_t va = scan(pool.cursor, pool.end, 0, rights);
    if (!va)
        va = scan(pool.base, pool.cursor, 0, rights);   /* pages that came back */
    if (va)
        pool.cursor = va;
    return va;
}

uint64_t pool_find(uint64_t rights)
{
    uint64_t va = pool_scan(rights);
    if (!va && pool_refill(1) > 0)
        va = pool_scan(rights);
    return va;
}

/* --- the pool protocol: a child whose pool runs dry asks its parent ----- */

#define REFILL_FIRST 32                 /* pages asked for the first time ... */
#define REFILL_MAX PT_PAGES             /* ... doubling up to one page table */

static int refill_off;                  /* >0: never yield for pages (see below) */
static uint64_t refill_chunk = REFILL_FIRST;

void pool_refill_block(int on)
{
    refill_off += on ? 1 : -1;
}

long pool_refill(uint64_t want)
{
    if (pool.root || refill_off)
        return 0;
    uint64_t n = want > refill_chunk ? want : refill_chunk;
    if (n > REFILL_MAX)
        n = REFILL_MAX;
    if (refill_chunk < REFILL_MAX)
        refill_chunk *= 2;
    uint64_t dst = pool.end;            /* a fresh page table's worth of our pool */
    refill_off++;
    long r = yield_to_parent(XOMB_UP_POOL, n, dst);
    refill_off--;
    if (r < 0 || vm_table_depth(dst) < 3)
        return 0;
    /* Count what arrived (the parent says so too, but our own tables are the
     * truth): it gave pages dst, dst + 4096, ... */
    uint64_t got = 0;
    while (got < n && (*vm_pt_entry(dst + got * PAGE_SIZE) & XOMB_PTE_P))
        got++;
    if (got) {
        pool.end += PT_SPAN;
        pool.count += got;
        pool.cursor = dst;
    }
    return (long)got;
}

uint64_t pool_reserve(uint64_t pages)
{
    while (pool.count < pages) {
        uint64_t want = pages - pool.count;
        if (pool_refill(want > REFILL_MAX ? REFILL_MAX : want) <= 0)
            break;
    }
    return pool.count;
}

void pool_consumed(uint64_t va)
{
    if (pool.count)
        pool.count--;
    if (va + PAGE_SIZE > pool.cursor)
        pool.cursor = va + PAGE_SIZE;
}

uint64_t pool_free_pages(void)
{
    return pool.count;
}

/* An empty slot in the pool (not the root's: nothing moves into the window),
 * growing the pool's covered range by one page table if it is full. */
static uint64_t pool_hole(void)
{
    uint64_t va = scan(pool.free_cursor, pool.end, 1, 0);
    if (!va)
        va = scan(pool.base, pool.free_cursor, 1, 0);
    if (!va) {
        if (mem_ensure_tables(XOMB_AS_SELF, pool.end) < 0)
            return 0;
        va = pool.end;
        pool.end += PT_SPAN;
    }
    pool.free_cursor = va;
    return va;
}

/* --- initialisation ---------------------------------------------------- */

void mem_init_root(const struct xomb_bootinfo *bi)
{
    uint64_t frames = bi->nframes;
    if (bi->dev_pfn + XOMB_DEV_PAGES > frames)
        frames = bi->dev_pfn + XOMB_DEV_PAGES;
    pool.root = 1;
    pool.base = XOMB_WINDOW_VA;
    pool.end = XOMB_WINDOW_VA + frames * PAGE_SIZE;
    pool.cursor = XOMB_WINDOW_VA + bi->first_free_pfn * PAGE_SIZE;
    pool.count = 0;
    /* Count what we own: one pass over the window. */
    for (uint64_t va = pool.base; (va = scan(va, pool.end, 0, XOMB_MAP_W)) != 0; va += PAGE_SIZE)
        pool.count++;
}

void mem_init_child(uint64_t pool_pages)
{
    pool.root = 0;
    pool.base = XOMB_POOL_VA;
    pool.end = XOMB_POOL_VA + ((pool_pages + PT_PAGES - 1) / PT_PAGES) * PT_SPAN;
    pool.cursor = pool.free_cursor = pool.base;
    pool.count = pool_pages;
}

void mem_exit(void)
{
    heap_release_all();
}

/* --- page tables ------------------------------------------------------- */

/* 2 MiB regions of each child known to be covered by our tables, so we do
 * not ask the kernel again (we cannot read a child's tables). */
#define TCACHE 8
static uint64_t tcache[XOMB_MAX_HANDLES][TCACHE];
static unsigned tcache_next[XOMB_MAX_HANDLES];

void mem_forget_handle(long h)
{
    if (h > 0 && h < XOMB_MAX_HANDLES) {
        memset(tcache[h], 0, sizeof(tcache[h]));
        tcache_next[h] = 0;
    }
}

/* The region a table of each level covers (and aligns to). */
static const uint64_t level_span[4] = { 0, 1UL << 21, 1UL << 30, 1UL << 39 };

/* Create the level-`level` table covering va in `as` from a pool donor. */
static long create_level(long as, uint64_t va, int level)
{
    uint64_t donor = pool_find(XOMB_MAP_W);
    if (!donor)
        return -LIBOS_ENOMEM;
    long r = xomb_create(as, va & ~(level_span[level] - 1), level, donor);
    if (r == 0)
        pool_consumed(donor);
    return r;
}

long mem_ensure_tables(long as, uint64_t va)
{
    if (as == XOMB_AS_SELF) {
        for (int depth = vm_table_depth(va); depth < 3; depth++) {
            long r = create_level(as, va, 3 - depth);
            if (r < 0 && r != -XOMB_EEXIST)
                return r;
        }
        return 0;
    }
    if (as <= 0 || as >= XOMB_MAX_HANDLES)
        return -XOMB_EBADH;
    uint64_t key = (va >> 21) + 1;
    for (int i = 0; i < TCACHE; i++)
        if (tcache[as][i] == key)
            return 0;
    for (int level = 3; level >= 1; level--) {
        long r = create_level(as, va, level);
        if (r < 0 && r != -XOMB_EEXIST)
            return r;
    }
    tcache[as][tcache_next[as]++ % TCACHE] = key;
    return 0;
}

/* --- pages ------------------------------------------------------------- */

long page_alloc_at(long as, uint64_t va, uint64_t rights)
{
    long r = mem_ensure_tables(as, va);
    if (r < 0)
        return r;
    uint64_t src = pool_find(rights | XOMB_MAP_W);
    if (!src)   /* none at all, or none we may map executable */
        return (rights & XOMB_MAP_X) && pool_find(XOMB_MAP_W) ? -XOMB_EPERM : -LIBOS_ENOMEM;
    struct xomb_result m = xomb_map(as, va, XOMB_AS_SELF, src, 1, rights | XOMB_MAP_MOVE);
    if (m.rv < 0)
        return m.rv;
    pool_consumed(src);
    return 0;
}

long page_alloc_range(long as, uint64_t va, uint64_t n, uint64_t rights)
{
    for (uint64_t i = 0; i < n; i++) {
        long r = page_alloc_at(as, va + i * PAGE_SIZE, rights);
        if (r < 0)
            return r;
    }
    return 0;
}

long page_free(uint64_t va)
{
    uint64_t e = vm_pte(va);
    if (!e)
        return 0;
    if (pool.root || !pte_writable(e)) {
        /* Home to the root's window (zeroed by the kernel). */
        struct xomb_result r = xomb_release(XOMB_AS_SELF, va, 1);
        return r.rv;
    }
    memset((void *)va, 0, PAGE_SIZE);   /* the next user of the pool sees zeros */
    uint64_t hole = pool_hole();
    if (!hole)
        return xomb_release(XOMB_AS_SELF, va, 1).rv;
    struct xomb_result m = xomb_map(XOMB_AS_SELF, hole, XOMB_AS_SELF, va, 1,
                                    pte_rights(e) | XOMB_MAP_MOVE);
    if (m.rv < 0)
        return m.rv;
    pool.count++;
    return 0;
}

void page_free_range(uint64_t va, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        page_free(va + i * PAGE_SIZE);
}

/* Contiguous usable pool pages starting at `first`, same rights, same PT. */
static uint64_t run_length(uint64_t first, uint64_t max)
{
    uint64_t e0 = *vm_pt_entry(first);
    uint64_t rights = pte_rights(e0);
    uint64_t n = 1;
    uint64_t va = first + PAGE_SIZE;
    while (n < max && (va & (PT_SPAN - 1)) != 0 && va < pool.end) {
        uint64_t e = *vm_pt_entry(va);
        if (!usable(e, rights) || pte_rights(e) != rights)
            break;
        n++;
        va += PAGE_SIZE;
    }
    return n;
}

long pool_give(long as, uint64_t dst_va, uint64_t n)
{
    uint64_t given = 0;
    while (given < n) {
        uint64_t dst = dst_va + given * PAGE_SIZE;
        long r = mem_ensure_tables(as, dst);
        if (r < 0)
            return given ? (long)given : r;
        uint64_t src = pool_find(XOMB_MAP_W);
        if (!src)
            return given ? (long)given : -LIBOS_ENOMEM;
        uint64_t max = n - given;
        uint64_t to_boundary = (PT_SPAN - (dst & (PT_SPAN - 1))) / PAGE_SIZE;
        if (max > to_boundary)
            max = to_boundary;
        uint64_t run = run_length(src, max);
        uint64_t flags = pte_rights(*vm_pt_entry(src)) | XOMB_MAP_MOVE;
        struct xomb_result m = xomb_map(as, dst, XOMB_AS_SELF, src, run, flags);
        for (uint64_t i = 0; i < m.done; i++)
            pool_consumed(src + i * PAGE_SIZE);
        given += m.done;
        if (m.rv < 0)
            return given ? (long)given : m.rv;
    }
    return (long)given;
}

long pool_reclaim(long as, uint64_t va, uint64_t n)
{
    if (pool.root)
        return 0;               /* destroying the child sends it all home to us */
    uint64_t i = 0;
    long got = 0;
    while (i < n) {
        uint64_t hole = pool_hole();
        if (!hole)
            break;
        uint64_t max = n - i;
        uint64_t run = 1;
        while (run < max && ((hole + run * PAGE_SIZE) & (PT_SPAN - 1)) != 0
               && hole + run * PAGE_SIZE < pool.end
               && !(*vm_pt_entry(hole + run * PAGE_SIZE) & XOMB_PTE_P))
            run++;
        uint64_t src = va + i * PAGE_SIZE;
        struct xomb_result m = xomb_map(XOMB_AS_SELF, hole, as, src, run,
                                        XOMB_MAP_W | XOMB_MAP_X | XOMB_MAP_MOVE);
        /* what a child leaves in its pages must not reach the next child */
        memset((void *)hole, 0, m.done * PAGE_SIZE);
        pool.count += m.done;
        got += (long)m.done;
        i += m.done;
        if (m.rv == 0)
            continue;
        if (m.rv == -XOMB_EPERM) {      /* a page without X: take it with what it has */
            struct xomb_result m2 = xomb_map(XOMB_AS_SELF, hole + m.done * PAGE_SIZE, as,
                                             va + i * PAGE_SIZE, 1,
                                             XOMB_MAP_W | XOMB_MAP_MOVE);
            if (m2.rv == 0) {
                memset((void *)(hole + m.done * PAGE_SIZE), 0, PAGE_SIZE);
                pool.count++;
                got++;
            }
            i++;                /* (read-only pages go home when the child dies) */
        } else if (m.rv == -XOMB_ENOTHELD) {
            i++;                /* the child does not hold this one: skip it */
        } else {
            break;
        }
    }
    return got;
}
