/* The ELF64 loader (elf.c): static x86-64 executables into an address space. */
#pragma once
#include <stddef.h>
#include <stdint.h>

/* Check everything about the image; 0, or -1 with a sentence in err. */
int elf_check(const void *image, uint64_t size, uint64_t *entry, char *err, size_t errlen);
/* What the loader put where. */
struct elf_info {
    uint64_t entry;
    uint64_t rw_start, rw_pages;    /* the writable pages (the child's own copy) */
};

/* Check, then map every PT_LOAD segment into `as` (a child handle) with
 * its rights.  Read-only and executable segments are loaded once into our
 * image cache and *shared* with every child that runs the same image;
 * writable segments are copied.  0, or -1 with a sentence in err. */
int elf_load(long as, const void *image, uint64_t size, struct elf_info *info, char *err,
             size_t errlen);
