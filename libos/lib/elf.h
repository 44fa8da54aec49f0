/* The ELF64 loader (elf.c): static x86-64 executables into an address space. */
#pragma once
#include <stddef.h>
#include <stdint.h>

/* Check everything about the image; 0, or -1 with a sentence in err. */
int elf_check(const void *image, uint64_t size, uint64_t *entry, char *err, size_t errlen);
/* Check, then map every PT_LOAD segment into `as` (a child handle, or
 * XOMB_AS_SELF) with its rights.  0, or -1 with a sentence in err. */
int elf_load(long as, const void *image, uint64_t size, uint64_t *entry, char *err, size_t errlen);
