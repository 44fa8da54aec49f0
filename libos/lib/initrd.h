/* The boot archive at XOMB_INITRD_VA (read-only): programs by name.
 * Layout: u64 magic (XOMB_INITRD_MAGIC), u64 count, then count entries of
 * { char name[32]; u64 offset; u64 size }, offsets from the archive start. */
#pragma once
#include <stdint.h>
#include "xomb_abi.h"

struct initrd_entry {
    char name[XOMB_INITRD_NAME];
    uint64_t offset;
    uint64_t size;
};

/* Number of valid entries (0 if there is no archive or it is malformed). */
int initrd_count(void);
const struct initrd_entry *initrd_entry_at(int i);
/* Find a file: 0 and its bytes, or -1. */
int initrd_find(const char *name, const void **data, uint64_t *size);
