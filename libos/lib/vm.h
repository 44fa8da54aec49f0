/* Reading our own page tables and the frame table.
 *
 * Every address space has a read-only recursive self-map (PML4 entry 510):
 * the level-1 entry that maps `va` is at XOMB_SELF_PT + (va >> 12) * 8, its
 * level-2 entry at XOMB_SELF_PD + (va >> 21) * 8, and so on.  A lower level
 * is only readable if the levels above are present (otherwise the read
 * itself faults), so vm_pte() walks from the top.
 *
 * The frame table (one u64 per physical frame: count in bits 0..31, type in
 * bits 32..39) is readable by everyone at XOMB_FRAMES_VA.
 */
#pragma once
#include <stdint.h>
#include "xomb_abi.h"

#define PAGE_SIZE 4096UL
#define PAGE_MASK (~(PAGE_SIZE - 1))
#define PTE_ADDR_OF(e) ((e) & XOMB_PTE_ADDR)
#define USER_VA_MASK (XOMB_USER_TOP - 1)
/* Where user mappings end (the kernel keeps PML4[255] for the gate page). */
#ifdef XOMB_USER_LIMIT
#define USER_LIMIT XOMB_USER_LIMIT
#else
#define USER_LIMIT XOMB_USER_TOP
#endif

static inline volatile const uint64_t *vm_pml4e(uint64_t va)
{
    return (volatile const uint64_t *)(XOMB_SELF_PML4 + ((va >> 39) & 511) * 8);
}
static inline volatile const uint64_t *vm_pdpte(uint64_t va)
{
    return (volatile const uint64_t *)(XOMB_SELF_PDPT + ((va & USER_VA_MASK) >> 30) * 8);
}
static inline volatile const uint64_t *vm_pde(uint64_t va)
{
    return (volatile const uint64_t *)(XOMB_SELF_PD + ((va & USER_VA_MASK) >> 21) * 8);
}
static inline volatile const uint64_t *vm_pt_entry(uint64_t va)
{
    return (volatile const uint64_t *)(XOMB_SELF_PT + ((va & USER_VA_MASK) >> 12) * 8);
}

/* PML4 entry `index` (0..511): handle slots are 256 + h. */
static inline uint64_t vm_pml4_slot(unsigned index)
{
    return *(volatile const uint64_t *)(XOMB_SELF_PML4 + (uint64_t)index * 8);
}

/* How many levels of tables exist above va's leaf: 0 = no PDPT,
 * 1 = PDPT only, 2 = PD too, 3 = a PT covers va (or a large page does). */
static inline int vm_table_depth(uint64_t va)
{
    if (!(*vm_pml4e(va) & XOMB_PTE_P)) return 0;
    uint64_t e = *vm_pdpte(va);
    if (!(e & XOMB_PTE_P)) return 1;
    if (e & XOMB_PTE_PS) return 3;
    e = *vm_pde(va);
    if (!(e & XOMB_PTE_P)) return 2;
    return 3;
}

/* The leaf entry mapping va (a 4 KiB entry, or a large page entry with the
 * address adjusted to va's 4 KiB frame), or 0 if va is not mapped. */
static inline uint64_t vm_pte(uint64_t va)
{
    if (!(*vm_pml4e(va) & XOMB_PTE_P)) return 0;
    uint64_t e = *vm_pdpte(va);
    if (!(e & XOMB_PTE_P)) return 0;
    if (e & XOMB_PTE_PS)
        return e + (va & ((1UL << 30) - 1) & PAGE_MASK);
    e = *vm_pde(va);
    if (!(e & XOMB_PTE_P)) return 0;
    if (e & XOMB_PTE_PS)
        return e + (va & ((1UL << 21) - 1) & PAGE_MASK);
    e = *vm_pt_entry(va);
    return (e & XOMB_PTE_P) ? e : 0;
}

static inline int vm_mapped(uint64_t va) { return vm_pte(va) != 0; }
static inline uint64_t vm_pfn(uint64_t va) { return PTE_ADDR_OF(vm_pte(va)) >> 12; }
static inline int pte_writable(uint64_t e) { return (e & XOMB_PTE_W) != 0; }
static inline int pte_executable(uint64_t e) { return !(e & XOMB_PTE_NX); }

/* Map flags that reproduce the rights of an existing entry. */
static inline uint64_t pte_rights(uint64_t e)
{
    return (pte_writable(e) ? XOMB_MAP_W : 0) | (pte_executable(e) ? XOMB_MAP_X : 0);
}

/* Our own root: the self-map entry points at the PML4 itself. */
static inline uint64_t vm_self_root(void)
{
    return PTE_ADDR_OF(vm_pml4_slot(XOMB_PML4_SELF));
}

/* Handle h (1 parent, 2..127 children): root phys, or 0 if the slot is empty. */
static inline uint64_t vm_handle_root(unsigned h)
{
    if (h < 1 || h >= XOMB_MAX_HANDLES) return 0;
    uint64_t e = vm_pml4_slot(XOMB_PML4_HANDLE0 + h);
    return (e & XOMB_PTE_SLOT) ? PTE_ADDR_OF(e) : 0;
}

/* Frame table. */
static inline uint64_t ft_entry(uint64_t pfn)
{
    return ((volatile const uint64_t *)XOMB_FRAMES_VA)[pfn];
}
static inline unsigned ft_type(uint64_t pfn)
{
    return (unsigned)((ft_entry(pfn) >> XOMB_FT_TYPE_SHIFT) & 0xff);
}
static inline uint32_t ft_count(uint64_t pfn)
{
    return (uint32_t)(ft_entry(pfn) & XOMB_FT_COUNT_MASK);
}
const char *ft_type_name(unsigned type);
