/* Spinlocks and atomics for code that runs on several CPUs at once. */
#pragma once
#include <stdint.h>

typedef struct { volatile uint32_t v; } spinlock_t;

#include "libos.h"           /* cpu_relax() */

static inline int spin_trylock(spinlock_t *l)
{
    return __atomic_exchange_n(&l->v, 1, __ATOMIC_ACQUIRE) == 0;
}

static inline void spin_lock(spinlock_t *l)
{
    while (!spin_trylock(l))
        while (__atomic_load_n(&l->v, __ATOMIC_RELAXED))
            cpu_relax();
}

static inline void spin_unlock(spinlock_t *l)
{
    __atomic_store_n(&l->v, 0, __ATOMIC_RELEASE);
}
