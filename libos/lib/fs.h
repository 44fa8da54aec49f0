/* XOFS: a small persistent file system on a disk VF's namespace (fs.c).
 *
 * Same format as vmm/xofs.py (the host tool), from the constants in
 * xomb_abi.h: a superblock pair, two inode tables used alternately, data
 * blocks; every file is one contiguous extent.  Every change is one
 * copy-on-write commit: new data and the new inode table go where the
 * committed state does not look, flush, then the next superblock, flush.
 * So a crash leaves the last flushed state intact (docs/DEVICES.md).
 */
#pragma once
#include <stdint.h>
#include "disk.h"

#define FS_ENOENT 1
#define FS_EEXIST 2
#define FS_ENOTDIR 3
#define FS_EISDIR 4
#define FS_ENOSPC 5
#define FS_EIO 6
#define FS_ENOTEMPTY 7
#define FS_EINVAL 8
#define FS_ENOMOUNT 9

struct fs_inode {
    uint32_t type, parent;
    uint64_t size;
    uint32_t start, nblocks;
    uint64_t gen;
    char name[32];
};

/* Mount the file system of disk d (reads both superblocks). 0 or -FS_E... */
int fs_mount(struct disk *d);
int fs_mounted(void);
uint64_t fs_generation(void);
/* Inode number of path, or -FS_E... */
int fs_lookup(const char *path);
const struct fs_inode *fs_inode(int ino);
/* Calls fn for each entry of a directory (or the file itself). */
int fs_list(const char *path, void (*fn)(const struct fs_inode *, void *), void *arg);
/* Read up to max bytes of a file; returns its size (may exceed max) or -error. */
long fs_read(const char *path, void *buf, uint64_t max);
/* Create or replace a file with n bytes (one commit). */
int fs_write(const char *path, const void *buf, uint64_t n);
/* Write n bytes at off (copy-on-write of the whole file; grows it). */
int fs_pwrite(const char *path, uint64_t off, const void *buf, uint64_t n);
int fs_mkdir(const char *path);
int fs_remove(const char *path);
/* Map a file as a memory region: fresh pages at va (writable), the file
 * read straight into them by the device.  Returns the size or -error. */
long fs_map(const char *path, uint64_t va, uint64_t *pages_out);
/* Write a mapped region back as the file's new contents (one commit). */
int fs_sync_map(const char *path, uint64_t va, uint64_t size);
const char *fs_strerror(int err);
uint32_t crc32(const void *buf, uint64_t n);
