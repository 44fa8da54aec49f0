/* XOFS (see fs.h and vmm/xofs.py, the host side of the same format). */
#include "fs.h"
#include "console.h"
#include "malloc.h"
#include "mem.h"
#include "string.h"
#include "vm.h"

#define BS XOMB_DISK_BLOCK
#define TBYTES (XOMB_FS_INODES * XOMB_FS_INODE_SIZE)

_Static_assert(sizeof(struct fs_inode) == XOMB_FS_INODE_SIZE, "inode layout");

struct sb {
    uint64_t magic, gen, nblocks;
    uint32_t table, table_crc, crc;
};

static struct disk *dsk;
static struct fs_inode table[XOMB_FS_INODES] __attribute__((aligned(4096)));
static uint8_t blockbuf[BS] __attribute__((aligned(4096)));
static uint64_t cur_gen, nblocks;
static uint32_t cur_table;

uint32_t crc32(const void *buf, uint64_t n)
{
    const uint8_t *p = buf;
    uint32_t c = 0xFFFFFFFFu;
    for (uint64_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320u & -(c & 1));
    }
    return ~c;
}

const char *fs_strerror(int err)
{
    static const char *names[] = { "ok", "no such file or directory", "file exists",
        "not a directory", "is a directory", "no space left", "I/O error",
        "directory not empty", "invalid name", "no file system (no disk?)" };
    if (err < 0)
        err = -err;
    return err < (int)(sizeof(names) / sizeof(names[0])) ? names[err] : "?";
}

int fs_mounted(void) { return dsk != 0; }
uint64_t fs_generation(void) { return cur_gen; }

/* Block I/O in pieces the device accepts. */
static int blk(unsigned op, uint64_t lba, uint64_t n, void *buf)
{
    uint8_t *p = buf;
    while (n) {
        uint32_t k = n > dsk->max_blocks ? dsk->max_blocks : (uint32_t)n;
        if (disk_io(dsk, op, lba, k, p) != XOMB_DST_OK)
            return -FS_EIO;
        lba += k;
        n -= k;
        p += (uint64_t)k * BS;
    }
    return 0;
}

int fs_mount(struct disk *d)
{
    static struct fs_inode cand[XOMB_FS_INODES] __attribute__((aligned(4096)));
    dsk = d;
    int found = 0;
    for (uint32_t slot = 0; slot < 2; slot++) {
        if (blk(XOMB_DOP_READ, slot, 1, blockbuf) < 0)
            continue;
        struct sb s;
        memcpy(&s, blockbuf, sizeof(s));
        if (s.magic != XOMB_FS_MAGIC || s.crc != crc32(blockbuf, 32) || s.table > 1 ||
            s.nblocks > d->nblocks)
            continue;
        if (found && s.gen <= cur_gen)
            continue;
        if (blk(XOMB_DOP_READ, XOMB_FS_TABLE_A + s.table * XOMB_FS_TABLE_BLOCKS,
                XOMB_FS_TABLE_BLOCKS, cand) < 0 || crc32(cand, TBYTES) != s.table_crc)
            continue;
        memcpy(table, cand, TBYTES);
        cur_gen = s.gen;
        cur_table = s.table;
        nblocks = s.nblocks;
        found = 1;
    }
    if (!found) {
        dsk = 0;
        return -FS_ENOMOUNT;
    }
    return 0;
}

/* --- names ---------------------------------------------------------------- */

static int child(int dir, const char *name, uint64_t len)
{
    for (int i = 1; i < XOMB_FS_INODES; i++)
        if (table[i].type != XOMB_FS_FREE && (int)table[i].parent == dir &&
            strlen(table[i].name) == len && !strncmp(table[i].name, name, len))
            return i;
    return -FS_ENOENT;
}

/* Walk path; with parent_out, stop before the last component and return the
 * directory (the last name in *name_out). */
static int walk(const char *path, int *parent_out, const char **name_out, uint64_t *len_out)
{
    int ino = 0;
    const char *p = path;
    for (;;) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        const char *e = p;
        while (*e && *e != '/')
            e++;
        const char *rest = e;
        while (*rest == '/')
            rest++;
        if (table[ino].type != XOMB_FS_DIR)
            return -FS_ENOTDIR;
        if (parent_out && !*rest) {
            *parent_out = ino;
            *name_out = p;
            *len_out = (uint64_t)(e - p);
            return 0;
        }
        int c = child(ino, p, (uint64_t)(e - p));
        if (c < 0)
            return c;
        ino = c;
        p = e;
    }
    return parent_out ? -FS_EINVAL : ino;
}

int fs_lookup(const char *path)
{
    if (!dsk)
        return -FS_ENOMOUNT;
    return walk(path, 0, 0, 0);
}

const struct fs_inode *fs_inode(int ino)
{
    return ino >= 0 && ino < XOMB_FS_INODES ? &table[ino] : 0;
}

int fs_list(const char *path, void (*fn)(const struct fs_inode *, void *), void *arg)
{
    int ino = fs_lookup(path);
    if (ino < 0)
        return ino;
    if (table[ino].type == XOMB_FS_FILE) {
        fn(&table[ino], arg);
        return 0;
    }
    for (int i = 1; i < XOMB_FS_INODES; i++)
        if (table[i].type != XOMB_FS_FREE && (int)table[i].parent == ino)
            fn(&table[i], arg);
    return 0;
}

/* --- commits ---------------------------------------------------------------- */

static int commit(void)
{
    uint32_t slot = cur_table ^ 1;
    if (blk(XOMB_DOP_WRITE, XOMB_FS_TABLE_A + slot * XOMB_FS_TABLE_BLOCKS,
            XOMB_FS_TABLE_BLOCKS, table) < 0)
        return -FS_EIO;
    if (disk_flush(dsk) != XOMB_DST_OK)          /* data + table before the switch */
        return -FS_EIO;
    uint64_t gen = cur_gen + 1;
    struct sb s = { XOMB_FS_MAGIC, gen, nblocks, slot, crc32(table, TBYTES), 0 };
    memset(blockbuf, 0, BS);
    memcpy(blockbuf, &s, sizeof(s));
    uint32_t crc = crc32(blockbuf, 32);
    memcpy(blockbuf + 32, &crc, 4);
    if (blk(XOMB_DOP_WRITE, gen & 1, 1, blockbuf) < 0 || disk_flush(dsk) != XOMB_DST_OK)
        return -FS_EIO;
    cur_gen = gen;
    cur_table = slot;
    return 0;
}

/* The in-memory table after a failed commit would differ from the disk:
 * read it back (the committed state is still there). */
static int rollback(int err)
{
    struct disk *d = dsk;
    fs_mount(d);
    return err;
}

static int free_inode(void)
{
    for (int i = 1; i < XOMB_FS_INODES; i++)
        if (table[i].type == XOMB_FS_FREE)
            return i;
    return -FS_ENOSPC;
}

/* First fit: n contiguous blocks no committed inode uses. */
static long alloc_blocks(uint64_t n)
{
    uint8_t *used = malloc(nblocks);
    if (!used)
        return -FS_ENOSPC;
    memset(used, 0, nblocks);
    for (int i = 0; i < XOMB_FS_INODES; i++)
        if (table[i].type == XOMB_FS_FILE)
            for (uint64_t b = table[i].start; b < (uint64_t)table[i].start + table[i].nblocks &&
                 b < nblocks; b++)
                used[b] = 1;
    uint64_t run = 0;
    long found = -FS_ENOSPC;
    for (uint64_t b = XOMB_FS_DATA_START; b < nblocks; b++) {
        run = used[b] ? 0 : run + 1;
        if (run == n) {
            found = (long)(b - n + 1);
            break;
        }
    }
    free(used);
    return found;
}

static int set_name(struct fs_inode *nd, const char *name, uint64_t len)
{
    if (len == 0 || len > XOMB_FS_NAME_MAX)
        return -FS_EINVAL;
    memset(nd->name, 0, sizeof(nd->name));
    memcpy(nd->name, name, len);
    return 0;
}

/* For creating path: the directory that holds its last component, and that
 * name (a valid one: 1..FS_NAME_MAX bytes). */
static int parent_of(const char *path, int *dir, const char **name, uint64_t *len)
{
    if (!dsk)
        return -FS_ENOMOUNT;
    int r = walk(path, dir, name, len);
    if (r < 0)
        return r;
    return *len == 0 || *len > XOMB_FS_NAME_MAX ? -FS_EINVAL : 0;
}

/* Write data (n bytes, from a DMA-able buffer) to fresh blocks and point the
 * file at them; commit. */
static int write_file(const char *path, const void *buf, uint64_t n)
{
    int dir;
    const char *name;
    uint64_t len;
    int r = parent_of(path, &dir, &name, &len);
    if (r < 0)
        return r;
    int ino = child(dir, name, len);
    if (ino >= 0 && table[ino].type != XOMB_FS_FILE)
        return -FS_EISDIR;
    if (ino < 0 && (ino = free_inode()) < 0)
        return ino;
    uint64_t nb = (n + BS - 1) / BS;
    long start = 0;
    if (nb) {
        if ((start = alloc_blocks(nb)) < 0)
            return (int)start;
        uint64_t whole = n / BS;
        if (whole && blk(XOMB_DOP_WRITE, (uint64_t)start, whole, (void *)buf) < 0)
            return -FS_EIO;
        if (n % BS) {                   /* the tail, padded with zeros */
            memset(blockbuf, 0, BS);
            memcpy(blockbuf, (const uint8_t *)buf + whole * BS, n % BS);
            if (blk(XOMB_DOP_WRITE, (uint64_t)start + whole, 1, blockbuf) < 0)
                return -FS_EIO;
        }
    }
    struct fs_inode *nd = &table[ino];
    nd->type = XOMB_FS_FILE;
    nd->parent = (uint32_t)dir;
    nd->size = n;
    nd->start = (uint32_t)start;
    nd->nblocks = (uint32_t)nb;
    nd->gen = cur_gen + 1;
    set_name(nd, name, len);
    r = commit();
    return r < 0 ? rollback(r) : 0;
}

/* Callers' buffers can be anywhere in our memory (the device translates our
 * virtual addresses), so write_file DMAs straight from them. */
int fs_write(const char *path, const void *buf, uint64_t n)
{
    return write_file(path, buf, n);
}

long fs_read(const char *path, void *buf, uint64_t max)
{
    int ino = fs_lookup(path);
    if (ino < 0)
        return ino;
    struct fs_inode *nd = &table[ino];
    if (nd->type != XOMB_FS_FILE)
        return -FS_EISDIR;
    uint64_t n = nd->size < max ? nd->size : max;
    uint64_t whole = n / BS;
    if (whole && blk(XOMB_DOP_READ, nd->start, whole, buf) < 0)
        return -FS_EIO;
    if (n % BS) {
        if (blk(XOMB_DOP_READ, nd->start + whole, 1, blockbuf) < 0)
            return -FS_EIO;
        memcpy((uint8_t *)buf + whole * BS, blockbuf, n % BS);
    }
    return (long)nd->size;
}

int fs_pwrite(const char *path, uint64_t off, const void *buf, uint64_t n)
{
    int ino = fs_lookup(path);
    uint64_t old = 0;
    if (ino >= 0) {
        if (table[ino].type != XOMB_FS_FILE)
            return -FS_EISDIR;
        old = table[ino].size;
    } else if (ino != -FS_ENOENT) {
        return ino;
    }
    uint64_t size = off + n > old ? off + n : old;
    uint8_t *tmp = malloc(size ? size : 1);
    if (!tmp)
        return -FS_ENOSPC;
    memset(tmp, 0, size);
    long r = old ? fs_read(path, tmp, old) : 0;
    if (r >= 0) {
        memcpy(tmp + off, buf, n);
        r = write_file(path, tmp, size);
    }
    free(tmp);
    return (int)r;
}

int fs_mkdir(const char *path)
{
    int dir;
    const char *name;
    uint64_t len;
    int r = parent_of(path, &dir, &name, &len);
    if (r < 0)
        return r;
    if (child(dir, name, len) >= 0)
        return -FS_EEXIST;
    int ino = free_inode();
    if (ino < 0)
        return ino;
    struct fs_inode *nd = &table[ino];
    memset(nd, 0, sizeof(*nd));
    if ((r = set_name(nd, name, len)) < 0)
        return r;
    nd->type = XOMB_FS_DIR;
    nd->parent = (uint32_t)dir;
    nd->gen = cur_gen + 1;
    r = commit();
    return r < 0 ? rollback(r) : 0;
}

int fs_remove(const char *path)
{
    int ino = fs_lookup(path);
    if (ino < 0)
        return ino;
    if (ino == 0)
        return -FS_EINVAL;
    if (table[ino].type == XOMB_FS_DIR)
        for (int i = 1; i < XOMB_FS_INODES; i++)
            if (table[i].type != XOMB_FS_FREE && (int)table[i].parent == ino)
                return -FS_ENOTEMPTY;
    memset(&table[ino], 0, sizeof(table[ino]));
    int r = commit();
    return r < 0 ? rollback(r) : 0;
}

long fs_map(const char *path, uint64_t va, uint64_t *pages_out)
{
    int ino = fs_lookup(path);
    if (ino < 0)
        return ino;
    struct fs_inode *nd = &table[ino];
    if (nd->type != XOMB_FS_FILE)
        return -FS_EISDIR;
    uint64_t pages = nd->nblocks ? nd->nblocks : 1;
    for (uint64_t i = 0; i < pages; i++) {
        long r = page_alloc_at(XOMB_AS_SELF, va + i * PAGE_SIZE, XOMB_MAP_W);
        if (r < 0) {
            page_free_range(va, i);
            return -FS_ENOSPC;
        }
    }
    /* Zero-copy: the device writes the blocks straight into the new region. */
    if (nd->nblocks && blk(XOMB_DOP_READ, nd->start, nd->nblocks, (void *)va) < 0) {
        page_free_range(va, pages);
        return -FS_EIO;
    }
    if (pages_out)
        *pages_out = pages;
    return (long)nd->size;
}

int fs_sync_map(const char *path, uint64_t va, uint64_t size)
{
    return write_file(path, (const void *)va, size);
}
