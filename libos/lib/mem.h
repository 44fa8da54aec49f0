/* Memory: the process's pool of spare frames and the pages it maps.
 *
 * The kernel has no allocator.  A process holds its spare frames mapped in
 * its *pool*, a range of its own address space: XOMB_POOL_VA.. in a child
 * (its parent moved them there), the window XOMB_WINDOW_VA + pfn*4096 in
 * init (every free frame of the machine).  To use a frame somewhere, we
 * move it (MAP_MOVE) from the pool to where it is wanted, in our own or in a
 * child's address space; page tables for the destination are created first,
 * each from a pool frame donated to the kernel.  Freeing moves the frame
 * back to the pool (zeroed first) so the process keeps its memory; init
 * instead releases it, which sends it home to the window zeroed.
 */
#pragma once
#include <stdint.h>
#include "syscall.h"

#define LIBOS_ENOMEM 100        /* pool empty (a libOS error, not a kernel one) */

struct xomb_bootinfo;
void mem_init_root(const struct xomb_bootinfo *bi);
void mem_init_child(uint64_t pool_pages);
void mem_exit(void);

/* Make sure tables exist in `as` down to the PT covering va. 0 or -error. */
long mem_ensure_tables(long as, uint64_t va);
/* Map one pool page at va in `as` with rights (XOMB_MAP_W / XOMB_MAP_X). */
long page_alloc_at(long as, uint64_t va, uint64_t rights);
long page_alloc_range(long as, uint64_t va, uint64_t n, uint64_t rights);
/* Give back the page mapped at va in our own space (to the pool). */
long page_free(uint64_t va);
void page_free_range(uint64_t va, uint64_t n);

/* Move n pool pages to dst_va.. in `as` (contiguous), W plus X where the
 * pool page has it.  Returns pages moved or -error. */
long pool_give(long as, uint64_t dst_va, uint64_t n);
/* Move the pages a child still maps at va..va+n back into our pool (pages
 * it does not hold are skipped).  Returns pages recovered. */
long pool_reclaim(long as, uint64_t va, uint64_t n);
/* A pool page with at least `rights`, or 0.  It stays in the pool: after
 * the kernel takes it (a donor, a MAP_MOVE) call pool_consumed(). */
uint64_t pool_find(uint64_t rights);
void pool_consumed(uint64_t va);
uint64_t pool_free_pages(void);

/* The pool protocol (exokernel: memory policy is the parent's).  A child
 * starts with a small pool; when it runs dry (pool_find finds nothing) it
 * yields to its parent with UP_POOL (arg0 = pages wanted, arg1 = where: the
 * next page table's worth of its pool), the parent moves pages there and
 * yields RESUME back.  pool_refill returns the pages received (0: none, or
 * refills are blocked: in init, while serving a child from an upcall, or
 * while a refill is in progress).  pool_reserve refills until the pool holds
 * `pages` (or the parent has no more) and returns the pool size. */
long pool_refill(uint64_t want);
uint64_t pool_reserve(uint64_t pages);
void pool_refill_block(int on);

/* A child handle went away: forget which of its tables we created. */
void mem_forget_handle(long h);

/* mem_exit() calls this (malloc.c): give the heap pages back. */
void heap_release_all(void);
