/* Shell file commands (see fsh.h). */
#include "fsh.h"
#include "console.h"
#include "fs.h"
#include "libos.h"
#include "malloc.h"
#include "mem.h"
#include "process.h"
#include "syscall.h"
#include "string.h"
#include "vm.h"

struct disk fsh_disk;

#define FILEMAP_VA 0x3000000000UL    /* where cat maps a file */
#define CAPRING_VA 0x3100000000UL    /* a child's private console out ring, while captured */

int fsh_init(int quiet)
{
    if (!vm_mapped(XOMB_DISK_VF_VA))
        return -1;
    long r = disk_open(&fsh_disk, XOMB_DISK_VF_VA, XOMB_DISK_QUEUE_VA, 64);
    if (r < 0) {
        if (!quiet)
            printf("[%s] disk: cannot open the VF (%s)\n", libos_name, xomb_errname(r));
        return -1;
    }
    int m = fs_mount(&fsh_disk);
    if (m < 0 && !quiet)
        printf("[%s] disk VF %u: %lu blocks, no file system (%s): use xomb-vmm mkfs\n",
               libos_name, fsh_disk.vf, fsh_disk.nblocks, fs_strerror(m));
    return m;
}

static void print_entry(const struct fs_inode *nd, void *arg)
{
    (void)arg;
    if (nd->type == XOMB_FS_DIR)
        printf("%s/\n", nd->name);
    else
        printf("%-32s %10lu\n", nd->name, nd->size);
}

static int report(const char *cmd, const char *path, int r)
{
    if (r >= 0)
        return 0;
    printf("%s: %s: %s\n", cmd, path, fs_strerror(r));
    return 1;
}

/* cat maps the file (XOmB style: a file is a memory region) and prints it. */
static int cat(const char *path)
{
    uint64_t pages = 0;
    long size = fs_map(path, FILEMAP_VA, &pages);
    if (size < 0)
        return report("cat", path, (int)size);
    console_write((const char *)FILEMAP_VA, (uint64_t)size);
    page_free_range(FILEMAP_VA, pages);
    return 0;
}

int fsh_builtin(int argc, char **argv, int *status)
{
    const char *c = argv[0];
    int is = !strcmp(c, "ls") || !strcmp(c, "cat") || !strcmp(c, "rm") ||
             !strcmp(c, "mkdir") || !strcmp(c, "write") || !strcmp(c, "df");
    if (!is)
        return 0;
    if (!fs_mounted()) {
        printf("%s: no file system (boot with --disk IMAGE)\n", c);
        *status = 1;
        return 1;
    }
    *status = 0;
    if (!strcmp(c, "ls")) {
        const char *p = argc > 1 ? argv[1] : "/";
        *status = report("ls", p, fs_list(p, print_entry, 0));
    } else if (!strcmp(c, "df")) {
        printf("disk VF %u: %lu blocks of %u bytes, generation %lu\n", fsh_disk.vf,
               fsh_disk.nblocks, XOMB_DISK_BLOCK, fs_generation());
    } else if (argc < 2) {
        printf("%s: needs a path\n", c);
        *status = 2;
    } else if (!strcmp(c, "cat")) {
        for (int i = 1; i < argc; i++)
            *status |= cat(argv[i]);
    } else if (!strcmp(c, "rm")) {
        for (int i = 1; i < argc; i++)
            *status |= report("rm", argv[i], fs_remove(argv[i]));
    } else if (!strcmp(c, "mkdir")) {
        for (int i = 1; i < argc; i++)
            *status |= report("mkdir", argv[i], fs_mkdir(argv[i]));
    } else if (!strcmp(c, "write")) {        /* write PATH WORDS...: a line into a file */
        uint64_t n = 0;
        char *buf = malloc(4096);
        for (int i = 2; buf && i < argc; i++) {
            uint64_t k = strlen(argv[i]);
            if (n + k + 2 > 4096)
                break;
            memcpy(buf + n, argv[i], k);
            n += k;
            buf[n++] = i + 1 < argc ? ' ' : '\n';
        }
        *status = report("write", argv[1], buf ? fs_write(argv[1], buf, n) : -FS_ENOSPC);
        free(buf);
    }
    return 1;
}

/* --- redirection ------------------------------------------------------------ */

static char *cap;
static uint64_t cap_len, cap_size;

static void capture(const char *s, uint64_t n)
{
    if (cap_len + n > cap_size) {
        uint64_t sz = cap_size ? cap_size : 4096;
        while (sz < cap_len + n)
            sz *= 2;
        char *p = realloc(cap, sz);
        if (!p)
            return;
        cap = p;
        cap_size = sz;
    }
    memcpy(cap + cap_len, s, n);
    cap_len += n;
}

void fsh_capture_begin(void)
{
    cap_len = 0;
    console_flush();
    console_capture = capture;
}

int fsh_capture_end(const char *path)
{
    console_capture = 0;
    int r = fs_mounted() ? fs_write(path, cap ? cap : "", cap_len) : -FS_ENOMOUNT;
    return report("xsh", path, r);
}

/* --- lending VFs ------------------------------------------------------------ */

int fsh_lend_vf(long h)
{
    for (int i = 0; i < XOMB_DISK_MAX_VFS; i++) {
        uint64_t va = XOMB_DISK_SPARE_VA + (uint64_t)i * PAGE_SIZE;
        if (vm_mapped(va) && disk_move_vf(h, XOMB_DISK_VF_VA, XOMB_AS_SELF, va) == 0)
            return i;
    }
    return -1;
}

void fsh_take_back_vf(long h, int spare)
{
    if (spare >= 0)
        disk_move_vf(XOMB_AS_SELF, XOMB_DISK_SPARE_VA + (uint64_t)spare * PAGE_SIZE, h,
                     XOMB_DISK_VF_VA);
}

/* --- capturing a program's output ------------------------------------------ *
 * The child gets a private console out ring (a page we share with it) instead of
 * the machine's.  It never rings a doorbell (`waiting` stays 0); we drain the ring
 * into the capture buffer at every tick that preempts it (process_interrupt_check
 * runs then) and once more when it ends.  A full ring makes it wait for the tick. */

struct cring { volatile uint32_t head, tail, waiting; };
static int (*saved_check)(void);
static int capturing_child;

static void drain_child(void)
{
    struct cring *r = (struct cring *)CAPRING_VA;
    const volatile char *data = (const volatile char *)(CAPRING_VA + XOMB_RING_DATA);
    uint32_t head = r->head, tail = r->tail;
    char tmp[256];
    while (head != tail) {
        uint32_t k = 0;
        while (head != tail && k < sizeof(tmp))
            tmp[k++] = data[head++ % XOMB_RING_SIZE];
        capture(tmp, k);
    }
    r->head = head;
}

static int tick_drain(void)
{
    if (capturing_child)
        drain_child();
    return saved_check ? saved_check() : 0;
}

int fsh_capture_child(long h)
{
    if (!console_capture || libos_host == XOMB_HOST_QEMU)
        return 0;
    if (page_alloc_at(XOMB_AS_SELF, CAPRING_VA, XOMB_MAP_W) < 0)
        return 0;
    memset((void *)CAPRING_VA, 0, PAGE_SIZE);
    xomb_release(h, XOMB_CONSOLE_OUT_VA, 1);            /* not the machine's ring ... */
    if (mem_ensure_tables(h, XOMB_CONSOLE_OUT_VA) < 0 ||   /* ... ours */
        xomb_map(h, XOMB_CONSOLE_OUT_VA, XOMB_AS_SELF, CAPRING_VA, 1, XOMB_MAP_W).rv < 0) {
        page_free(CAPRING_VA);
        return 0;
    }
    saved_check = process_interrupt_check;
    process_interrupt_check = tick_drain;
    capturing_child = 1;
    return 1;
}

void fsh_capture_child_end(long h)
{
    if (!capturing_child)
        return;
    drain_child();
    capturing_child = 0;
    process_interrupt_check = saved_check;
    xomb_release(h, XOMB_CONSOLE_OUT_VA, 1);
    page_free(CAPRING_VA);
}
