/* ELF64 loader.
 *
 * The image is untrusted input (it comes from an archive anyone could have
 * built), so every field is checked before it is used, each with its own
 * message, and every sum is checked for overflow.
 *
 * Loading: for each PT_LOAD segment, the pages it covers are filled in our
 * scratch area (XOMB_SCRATCH_VA: pool frames moved there, zeroed, the file
 * bytes copied in) and then *moved* with the segment's rights: R always, W
 * if PF_W, X if PF_X.  A segment that is both W and X is refused.
 *
 * Writable segments move into the child: each child has its own copy.
 * Read-only and executable segments move into our *image cache* (a region
 * of our own, mapped without W) the first time an image is loaded, and
 * are shared from there with every child that runs it, like a page cache:
 * text is loaded once, costs one MAP per child, and its frames stay ours
 * when the child is destroyed.
 */
#include "elf.h"
#include "console.h"
#include "mem.h"
#include "string.h"
#include "vm.h"

#define EI_NIDENT 16
#define ET_EXEC 2
#define EM_X86_64 62
#define PT_LOAD 1
#define PF_X 1
#define PF_W 2
#define PF_R 4
#define MAX_PHNUM 64
#define SCRATCH_PAGES 512       /* one page table's worth at a time */
/* The image cache: a libOS-private region next to the scratch area. */
#define CACHE_VA (XOMB_SCRATCH_VA + (1UL << 30))
#define CACHE_END (XOMB_SCRATCH_VA + (4UL << 30))
#define CACHE_SLOTS 32

typedef struct {
    unsigned char e_ident[EI_NIDENT];
    uint16_t e_type, e_machine;
    uint32_t e_version;
    uint64_t e_entry, e_phoff, e_shoff;
    uint32_t e_flags;
    uint16_t e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx;
} Elf64_Ehdr;

typedef struct {
    uint32_t p_type, p_flags;
    uint64_t p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align;
} Elf64_Phdr;

#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); return -1; } while (0)

/* Programs live between the libOS's fixed low pages and the archive. */
#define LOAD_MIN XOMB_PROGRAM_VA
#define LOAD_MAX XOMB_INITRD_VA

static const Elf64_Phdr *phdrs(const void *image)
{
    const Elf64_Ehdr *eh = image;
    return (const Elf64_Phdr *)((const char *)image + eh->e_phoff);
}

int elf_check(const void *image, uint64_t size, uint64_t *entry, char *err, size_t errlen)
{
    const Elf64_Ehdr *eh = image;
    if (size < sizeof(Elf64_Ehdr))
        FAIL("file too small for an ELF header (%lu bytes)", size);
    if (memcmp(eh->e_ident, "\177ELF", 4) != 0)
        FAIL("not an ELF file (bad magic)");
    if (eh->e_ident[4] != 2)
        FAIL("not a 64-bit ELF (class %u)", eh->e_ident[4]);
    if (eh->e_ident[5] != 1)
        FAIL("not little-endian (data encoding %u)", eh->e_ident[5]);
    if (eh->e_ident[6] != 1 || eh->e_version != 1)
        FAIL("unknown ELF version");
    if (eh->e_type != ET_EXEC)
        FAIL("not an executable (e_type %u, want ET_EXEC)", eh->e_type);
    if (eh->e_machine != EM_X86_64)
        FAIL("not x86-64 (e_machine %u)", eh->e_machine);
    if (eh->e_phentsize != sizeof(Elf64_Phdr))
        FAIL("bad program header size %u (want %lu)", eh->e_phentsize, sizeof(Elf64_Phdr));
    if (eh->e_phnum == 0 || eh->e_phnum > MAX_PHNUM)
        FAIL("bad program header count %u (1..%d)", eh->e_phnum, MAX_PHNUM);
    if (eh->e_phoff > size || (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr) > size - eh->e_phoff)
        FAIL("program headers outside the file");
    if (eh->e_phoff % 8)
        FAIL("misaligned program headers");

    const Elf64_Phdr *ph = phdrs(image);
    int loads = 0, entry_ok = 0;
    uint64_t prev_end = 0;              /* last page end of the previous segment */
    for (int i = 0; i < eh->e_phnum; i++) {
        const Elf64_Phdr *p = &ph[i];
        if (p->p_type != PT_LOAD)
            continue;
        loads++;
        if (p->p_offset > size || p->p_filesz > size - p->p_offset)
            FAIL("segment %d: file bytes outside the file", i);
        if (p->p_filesz > p->p_memsz)
            FAIL("segment %d: file size larger than memory size", i);
        if (p->p_memsz == 0)
            FAIL("segment %d: empty", i);
        if (p->p_vaddr > XOMB_USER_TOP || p->p_memsz > XOMB_USER_TOP - p->p_vaddr)
            FAIL("segment %d: not in the user half (0x%lx + 0x%lx)", i, p->p_vaddr, p->p_memsz);
        if (p->p_vaddr < LOAD_MIN || p->p_vaddr + p->p_memsz > LOAD_MAX)
            FAIL("segment %d: 0x%lx..0x%lx outside the program area 0x%lx..0x%lx", i,
                 p->p_vaddr, p->p_vaddr + p->p_memsz, (uint64_t)LOAD_MIN, (uint64_t)LOAD_MAX);
        if (p->p_align > 1 && (p->p_align & (p->p_align - 1)))
            FAIL("segment %d: alignment %lu not a power of two", i, p->p_align);
        if (p->p_align > 1 && (p->p_vaddr - p->p_offset) % p->p_align)
            FAIL("segment %d: address and offset disagree modulo alignment", i);
        if ((p->p_flags & PF_W) && (p->p_flags & PF_X))
            FAIL("segment %d: writable and executable", i);
        uint64_t start = p->p_vaddr & PAGE_MASK;
        if (start < prev_end)
            FAIL("segment %d: overlaps the previous segment's pages (unsorted or shared page)", i);
        prev_end = (p->p_vaddr + p->p_memsz + PAGE_SIZE - 1) & PAGE_MASK;
        if ((p->p_flags & PF_X) && eh->e_entry >= p->p_vaddr
            && eh->e_entry < p->p_vaddr + p->p_memsz)
            entry_ok = 1;
    }
    if (!loads)
        FAIL("no PT_LOAD segment");
    if (!entry_ok)
        FAIL("entry point 0x%lx not in an executable segment", eh->e_entry);
    if (entry)
        *entry = eh->e_entry;
    return 0;
}

/* Fill `n` scratch pages with the part of segment p that starts at page va. */
static void fill(const char *image, const Elf64_Phdr *p, uint64_t va, uint64_t n)
{
    char *dst = (char *)XOMB_SCRATCH_VA;
    memset(dst, 0, n * PAGE_SIZE);
    uint64_t lo = va > p->p_vaddr ? va : p->p_vaddr;
    uint64_t hi = va + n * PAGE_SIZE;
    if (hi > p->p_vaddr + p->p_filesz)
        hi = p->p_vaddr + p->p_filesz;
    if (lo < hi)
        memcpy(dst + (lo - va), image + p->p_offset + (lo - p->p_vaddr), hi - lo);
}

struct cached {
    const void *image;          /* which archive file ... */
    int seg;                    /* ... and segment */
    uint64_t va, pages;         /* where it sits in our cache */
};
static struct cached cache[CACHE_SLOTS];
static int ncached;
static uint64_t cache_top = CACHE_VA;

/* Load n pages of segment p starting at page va into scratch, then move
 * them to (as, dst) with rights.  0 or an error. */
static long load_pages(const char *image, const Elf64_Phdr *p, uint64_t va, uint64_t n,
                       long as, uint64_t dst, uint64_t rights)
{
    long r = page_alloc_range(XOMB_AS_SELF, XOMB_SCRATCH_VA, n,
                              XOMB_MAP_W | (rights & XOMB_MAP_X));
    if (r == 0)
        r = mem_ensure_tables(as, dst);
    if (r < 0) {
        page_free_range(XOMB_SCRATCH_VA, n);
        return r;
    }
    fill(image, p, va, n);
    struct xomb_result m = xomb_map(as, dst, XOMB_AS_SELF, XOMB_SCRATCH_VA, n,
                                    rights | XOMB_MAP_MOVE);
    if (m.rv < 0)
        page_free_range(XOMB_SCRATCH_VA, n);
    return m.rv;
}

/* The cached copy of a read-only segment, loading it if needed: its VA or 0. */
static uint64_t cached_segment(const char *image, int i, const Elf64_Phdr *p, uint64_t pages,
                               uint64_t rights)
{
    for (int k = 0; k < ncached; k++)
        if (cache[k].image == image && cache[k].seg == i && cache[k].pages == pages)
            return cache[k].va;
    if (ncached == CACHE_SLOTS)
        return 0;
    /* each segment starts on its own page table: batches never straddle */
    uint64_t at = (cache_top + (1UL << 21) - 1) & ~((1UL << 21) - 1);
    if (at + pages * PAGE_SIZE > CACHE_END)
        return 0;
    uint64_t va = p->p_vaddr & PAGE_MASK;
    for (uint64_t done = 0; done < pages;) {
        uint64_t n = pages - done;
        if (n > SCRATCH_PAGES) n = SCRATCH_PAGES;
        if (load_pages(image, p, va + done * PAGE_SIZE, n, XOMB_AS_SELF,
                       at + done * PAGE_SIZE, rights) < 0) {
            page_free_range(at, done);
            return 0;
        }
        done += n;
    }
    cache[ncached++] = (struct cached){ image, i, at, pages };
    cache_top = at + pages * PAGE_SIZE;
    return at;
}

int elf_load(long as, const void *image, uint64_t size, struct elf_info *info, char *err,
             size_t errlen)
{
    uint64_t entry;
    if (elf_check(image, size, &entry, err, errlen) < 0)
        return -1;
    const Elf64_Ehdr *eh = image;
    const Elf64_Phdr *ph = phdrs(image);
    if (info) {
        info->entry = entry;
        info->rw_start = info->rw_pages = 0;
    }
    for (int i = 0; i < eh->e_phnum; i++) {
        const Elf64_Phdr *p = &ph[i];
        if (p->p_type != PT_LOAD)
            continue;
        uint64_t rights = ((p->p_flags & PF_W) ? XOMB_MAP_W : 0)
                        | ((p->p_flags & PF_X) ? XOMB_MAP_X : 0);
        uint64_t start = p->p_vaddr & PAGE_MASK;
        uint64_t end = (p->p_vaddr + p->p_memsz + PAGE_SIZE - 1) & PAGE_MASK;
        uint64_t pages = (end - start) / PAGE_SIZE;
        uint64_t shared = (rights & XOMB_MAP_W) || as == XOMB_AS_SELF ? 0
                        : cached_segment(image, i, p, pages, rights);
        if (rights & XOMB_MAP_W && info && !info->rw_pages) {
            info->rw_start = start;
            info->rw_pages = pages;
        }
        uint64_t va = start;
        while (va < end) {
            /* A batch: up to the end of the segment, of the destination's
             * page table, and of our scratch window. */
            uint64_t n = (end - va) / PAGE_SIZE;
            uint64_t to_pt = ((va | ((1UL << 21) - 1)) + 1 - va) / PAGE_SIZE;
            if (n > to_pt) n = to_pt;
            if (n > SCRATCH_PAGES) n = SCRATCH_PAGES;
            long r;
            if (shared) {
                uint64_t from = shared + (va - start);
                uint64_t to_cpt = ((from | ((1UL << 21) - 1)) + 1 - from) / PAGE_SIZE;
                if (n > to_cpt) n = to_cpt;
                r = mem_ensure_tables(as, va);
                if (r == 0)
                    r = xomb_map(as, va, XOMB_AS_SELF, from, n, rights).rv;
            } else {
                r = load_pages(image, p, va, n, as, va, rights);
            }
            if (r < 0)
                FAIL("segment %d: cannot map 0x%lx: %s", i, va,
                     r == -XOMB_EPERM ? "no executable frame in the pool (pool pages are NX)"
                                      : xomb_errname(r));
            va += n * PAGE_SIZE;
        }
    }
    return 0;
}
