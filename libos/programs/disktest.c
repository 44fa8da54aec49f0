/* disktest: the disk from a program's point of view (it uses the VF xsh lends it).
 *
 *   disktest bench [MB]     sequential write/read (1 MiB commands, 4 in flight),
 *                           4 KiB random reads at QD1 and QD32; prints "@disk" lines
 *   disktest churn N        write files /churn/0..N-1 into our VF's file system,
 *                           printing "acked I" once file I is durable (crash test)
 *   disktest verify N       check what churn wrote
 *   disktest fsops          fs_pwrite, and a file mapped as memory, changed, synced back
 *   disktest irq N          N write+read round trips waiting for completions by
 *                           interrupt (the driver halts its CPU: YIELD IDLE)
 */
#include "xomb.h"

#define BUF_VA 0x3800000000UL
#define BUF_PAGES 1024                  /* 4 MiB */

static struct disk d;

static uint64_t ns_of(uint64_t cycles)
{
    uint64_t khz = libos_tsc_khz ? libos_tsc_khz : 3000000;
    return cycles * 1000000 / khz;
}

static uint64_t rng = 88172645463325252ULL;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Keep `qd` commands of `nb` blocks in flight until `total` are done. */
static uint64_t run(unsigned op, uint32_t nb, unsigned qd, uint64_t total, int random,
                    uint64_t *errors)
{
    uint64_t issued = 0, done = 0, span = d.nblocks - nb, seq = 0;
    struct disk_cqe c;
    uint64_t t0 = rdtsc();
    while (done < total) {
        int added = 0;
        while (issued < total && disk_inflight(&d) < qd) {
            uint64_t lba = random ? next_rand() % span : (seq += nb) % span;
            uint64_t slot = issued % qd;
            uint64_t buf = BUF_VA + (slot * nb * 4096) % (BUF_PAGES * 4096UL);
            disk_submit(&d, op, (uint16_t)slot, lba, nb, buf);
            issued++;
            added = 1;
        }
        if (added)
            disk_kick(&d);
        while (disk_reap(&d, &c)) {
            done++;
            if (c.status >> 1)
                (*errors)++;
        }
        cpu_relax();
    }
    return ns_of(rdtsc() - t0);
}

static int bench(uint64_t mb)
{
    if (page_alloc_range(XOMB_AS_SELF, BUF_VA, BUF_PAGES, XOMB_MAP_W) < 0) {
        puts("disktest: no memory for the buffers");
        return 1;
    }
    for (uint64_t i = 0; i < BUF_PAGES * 4096UL; i += 8)
        *(uint64_t *)(BUF_VA + i) = i * 0x9E3779B97F4A7C15ULL;
    uint64_t errors = 0;
    uint64_t cmds = mb;                 /* 1 MiB each */
    if (cmds * 256 > d.nblocks)
        cmds = d.nblocks / 256;
    uint64_t db0 = d.doorbells;
    uint64_t t = run(XOMB_DOP_WRITE, 256, 4, cmds, 0, &errors);     /* fresh blocks */
    uint64_t t2 = run(XOMB_DOP_WRITE, 256, 4, cmds, 0, &errors);    /* overwrite */
    if (t2 < t)
        t = t2;                         /* the better of the two, as the host baseline */
    printf("@disk seq_write_MBps %lu\n", cmds * 1000000000UL / (t ? t : 1));
    disk_flush(&d);
    t = run(XOMB_DOP_READ, 256, 4, cmds, 0, &errors);
    printf("@disk seq_read_MBps %lu\n", cmds * 1000000000UL / (t ? t : 1));
    uint64_t n1 = 2000, n32 = 20000;
    uint64_t db1 = d.doorbells;
    t = run(XOMB_DOP_READ, 1, 1, n1, 1, &errors);
    printf("@disk rand4k_qd1_iops %lu\n", n1 * 1000000000UL / (t ? t : 1));
    uint64_t db2 = d.doorbells;
    printf("@disk qd1_doorbells_per_1000_io %lu\n", (db2 - db1) * 1000 / n1);
    t = run(XOMB_DOP_READ, 1, 32, n32, 1, &errors);
    printf("@disk rand4k_qd32_iops %lu\n", n32 * 1000000000UL / (t ? t : 1));
    printf("@disk qd32_doorbells_per_1000_io %lu\n", (d.doorbells - db2) * 1000 / n32);
    printf("@disk ios %lu doorbells %lu errors %lu\n", 3 * cmds + n1 + n32,
           d.doorbells - db0, errors);
    return errors ? 1 : 0;
}

static void pattern(char *buf, uint64_t i, uint64_t n)
{
    for (uint64_t k = 0; k < n; k++)
        buf[k] = (char)('a' + (i * 7 + k) % 26);
}

static uint64_t churn_size(uint64_t i) { return 100 + (i * 1237) % 9000; }

static int churn(uint64_t n, int verify)
{
    if (fs_mount(&d) < 0) {
        puts("disktest: no file system on our VF");
        return 1;
    }
    if (!verify)
        fs_mkdir("/churn");
    char *buf = malloc(16384), *got = malloc(16384);
    char path[48];
    int bad = 0;
    for (uint64_t i = verify && n > 64 ? n - 64 : 0; i < n; i++) {
        snprintf(path, sizeof(path), "/churn/%lu", i % 64);
        uint64_t sz = churn_size(i);
        pattern(buf, i, sz);
        if (verify) {
            long r = fs_read(path, got, 16384);
            if (r != (long)sz || memcmp(buf, got, sz)) {
                printf("bad %lu\n", i);
                bad++;
            }
            continue;
        }
        int r = fs_write(path, buf, sz);
        if (r < 0) {
            printf("disktest: %s: %s\n", path, fs_strerror(r));
            return 1;
        }
        printf("acked %lu\n", i);
    }
    printf("disktest: %s %lu files, %d bad\n", verify ? "verified" : "wrote", n, bad);
    return bad != 0;
}

/* fs_pwrite, and a file mapped as a memory region, changed, and synced back. */
static int fsops(void)
{
    if (fs_mount(&d) < 0) {
        puts("disktest: no file system on our VF");
        return 1;
    }
    char got[64];
    int bad = 0;
    bad |= fs_write("/ops", "hello", 5) < 0;
    bad |= fs_pwrite("/ops", 3, "XY", 2) < 0;
    bad |= fs_pwrite("/ops", 8, "!", 1) < 0;                /* grows, zero-filled */
    long n = fs_read("/ops", got, sizeof(got));
    bad |= n != 9 || memcmp(got, "helXY\0\0\0!", 9);
    uint64_t pages = 0;
    uint64_t va = 0x3000000000UL;
    long size = fs_map("/ops", va, &pages);
    bad |= size != 9 || memcmp((void *)va, "helXY", 5);
    if (size == 9) {
        memcpy((void *)va, "HELLO", 5);                    /* change the region ... */
        bad |= fs_sync_map("/ops", va, 9) < 0;              /* ... and write it back */
        page_free_range(va, pages);
    }
    n = fs_read("/ops", got, sizeof(got));
    bad |= n != 9 || memcmp(got, "HELLO\0\0\0!", 9);
    printf("disktest: fsops %s (generation %lu)\n", bad ? "FAILED" : "ok", fs_generation());
    return bad;
}

/* Completions by interrupt: each wait halts this CPU until the disk's
 * interrupt (an INTERRUPT upcall) wakes it. */
static int irq_test(uint64_t n)
{
    static uint64_t page[512] __attribute__((aligned(4096)));
    disk_use_interrupts(&d, 1);
    for (uint64_t i = 0; i < n; i++) {
        for (int k = 0; k < 512; k++)
            page[k] = i * 1000 + (uint64_t)k;
        int s1 = disk_io(&d, XOMB_DOP_WRITE, i % d.nblocks, 1, page);
        memset(page, 0, sizeof(page));
        int s2 = disk_io(&d, XOMB_DOP_READ, i % d.nblocks, 1, page);
        if (s1 || s2 || page[7] != i * 1000 + 7) {
            printf("irq: I/O %lu failed (status %d/%d)\n", i, s1, s2);
            return 1;
        }
    }
    printf("irq: %lu write+read round trips, completions by interrupt\n", n);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        puts("usage: disktest bench [MB] | churn N | verify N");
        return 2;
    }
    long r = disk_open(&d, XOMB_DISK_VF_VA, XOMB_DISK_QUEUE_VA, 64);
    if (r < 0) {
        printf("disktest: no disk VF (%s)\n", xomb_errname(r));
        return 2;
    }
    uint64_t n = argc > 2 ? strtoul(argv[2], 0, 0) : 0;
    if (!strcmp(argv[1], "bench"))
        return bench(n ? n : 64);
    if (!strcmp(argv[1], "churn"))
        return churn(n ? n : 100, 0);
    if (!strcmp(argv[1], "fsops"))
        return fsops();
    if (!strcmp(argv[1], "verify"))
        return churn(n ? n : 100, 1);
    if (!strcmp(argv[1], "irq"))
        return irq_test(n ? n : 20);
    puts("disktest: unknown command");
    return 2;
}
