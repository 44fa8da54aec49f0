/* malloc over pages of the heap region (XOMB_HEAP_VA..), malloc.c. */
#pragma once
#include <stddef.h>

void *malloc(size_t n);
void free(void *p);
void *calloc(size_t n, size_t size);
void *realloc(void *p, size_t n);
