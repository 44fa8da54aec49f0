/* The argv page: what a parent tells its child, at XOMB_ARGS_VA.
 *
 * This is a libOS convention, not a kernel one (the kernel knows nothing of
 * arguments): the parent fills a page in its scratch area and moves it into
 * the child.  All pointers are offsets into the page, so it can live at any
 * address.
 */
#pragma once
#include <stdint.h>

#define XARGS_MAGIC 0x53475241424d4f58ULL      /* "XOMBARGS" */
#define XARGS_MAX 64                            /* argv entries */

#define ARGS_F_ZERO_CHECKED (1u << 0)   /* init verified frames come home zeroed */
#define ARGS_F_ZERO_OK      (1u << 1)   /* ... and they were */

struct xomb_args {
    uint64_t magic;         /* XARGS_MAGIC */
    uint64_t argc;
    uint64_t host;          /* XOMB_HOST_*: how to reach the console */
    uint64_t pool_pages;    /* spare frames the parent moved to XOMB_POOL_VA */
    uint64_t initrd_size;   /* boot archive shared read-only at XOMB_INITRD_VA */
    uint64_t tsc_khz;
    uint64_t flags;         /* ARGS_F_* */
    uint64_t ncpus;         /* CPUs in the machine (a parent may donate them) */
    uint16_t argv_off[XARGS_MAX]; /* offset of each NUL-terminated string */
    char strings[];         /* the strings, up to the end of the page */
};
