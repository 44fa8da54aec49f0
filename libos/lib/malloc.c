/* malloc: a first-fit allocator over an address-ordered free list.
 *
 * The heap is the region from XOMB_HEAP_VA up; it grows a few pages at a
 * time with page_alloc_at() (a frame moved from our pool).  Every block has
 * a 16-byte header holding its size; a free block also links to the next
 * free one.  Freeing inserts in address order and merges with the
 * neighbours, so the list never fragments into adjacent pieces.  At exit
 * the whole heap goes back to the pool (heap_release_all), where the parent
 * takes it back.
 */
#include "malloc.h"
#include <stddef.h>
#include "mem.h"
#include "string.h"
#include "vm.h"

struct block {
    size_t size;                /* whole block, header included */
    struct block *next;         /* free blocks only */
};

#define HDR 16
#define ALIGN 16
#define MIN_BLOCK 32
#define GROW_PAGES 4

static struct block *free_list;
static uint64_t heap_top = XOMB_HEAP_VA;

static void insert_free(struct block *b)
{
    struct block **pp = &free_list;
    while (*pp && *pp < b)
        pp = &(*pp)->next;
    b->next = *pp;
    *pp = b;
    /* LAB 4 BEGIN */
    if (b->next && (char *)b + b->size == (char *)b->next) {       /* merge right */
        b->size += b->next->size;
        b->next = b->next->next;
    }
    if (pp != &free_list) {                                         /* merge left */
        struct block *prev = (struct block *)((char *)pp - offsetof(struct block, next));
        if ((char *)prev + prev->size == (char *)b) {
            prev->size += b->size;
            prev->next = b->next;
        }
    }
    /* LAB 4 END */
}

static int grow(size_t need)
{
    size_t pages = (need + PAGE_SIZE - 1) / PAGE_SIZE;
    if (pages < GROW_PAGES)
        pages = GROW_PAGES;
    uint64_t start = heap_top;
    for (size_t i = 0; i < pages; i++) {
        if (page_alloc_at(XOMB_AS_SELF, heap_top, XOMB_MAP_W) < 0)
            break;
        heap_top += PAGE_SIZE;
    }
    if (heap_top - start < need)
        return 0;                   /* (the pages we got stay, as a free block) */
    struct block *b = (struct block *)start;
    b->size = heap_top - start;
    insert_free(b);
    return 1;
}

void *malloc(size_t n)
{
    if (n == 0 || n > (1UL << 40))
        return 0;
    size_t need = (n + HDR + ALIGN - 1) & ~(size_t)(ALIGN - 1);
    if (need < MIN_BLOCK)
        need = MIN_BLOCK;
    for (int attempt = 0; attempt < 2; attempt++) {
        for (struct block **pp = &free_list; *pp; pp = &(*pp)->next) {
            struct block *b = *pp;
            if (b->size < need)
                continue;
            if (b->size - need >= MIN_BLOCK) {         /* split: keep the tail free */
                struct block *rest = (struct block *)((char *)b + need);
                rest->size = b->size - need;
                rest->next = b->next;
                *pp = rest;
                b->size = need;
            } else {
                *pp = b->next;
            }
            return (char *)b + HDR;
        }
        if (!grow(need))
            return 0;
    }
    return 0;
}

void free(void *p)
{
    /* LAB 4 BEGIN STUB: (void)p; */
    if (p)
        insert_free((struct block *)((char *)p - HDR));
    /* LAB 4 END */
}

void *calloc(size_t n, size_t size)
{
    if (size && n > (~(size_t)0) / size)
        return 0;
    void *p = malloc(n * size);
    if (p)
        memset(p, 0, n * size);
    return p;
}

void *realloc(void *p, size_t n)
{
    if (!p)
        return malloc(n);
    if (n == 0) {
        free(p);
        return 0;
    }
    struct block *b = (struct block *)((char *)p - HDR);
    if (b->size - HDR >= n)
        return p;
    void *q = malloc(n);
    if (q) {
        memcpy(q, p, b->size - HDR);
        free(p);
    }
    return q;
}

void heap_release_all(void)
{
    page_free_range(XOMB_HEAP_VA, (heap_top - XOMB_HEAP_VA) / PAGE_SIZE);
    heap_top = XOMB_HEAP_VA;
    free_list = 0;
}
