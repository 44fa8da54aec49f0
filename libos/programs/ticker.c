/* ticker: a long-running program that lives through rebootless kernel
 * upgrades (docs/UPGRADE.md, tests/test_upgrade.py).
 *
 *   ticker [N [MS]]   N ticks (default 50), one every MS milliseconds (20).
 *
 * Each tick does system calls (maps a fresh page, writes it, frees it: MAP and
 * RELEASE under whichever kernel runs now) and prints "tick I kernel=VERSION",
 * VERSION read from KINFO_VA.  A new kernel prints "ticker: kernel now
 * VERSION", and a new answer to one refused system call (destroying handle
 * 99, which we do not hold: EBADH) prints "ticker: release(99) now says ERR",
 * so a kernel that changed a syscall's behaviour shows.  With a disk, /ticker.log stays in use the whole run: every tick
 * appends its line, and at the end the file is read back and compared with
 * what was written, so a lost or torn write under an upgrade shows. */
#include "xomb.h"

#define SCRATCH 0x5000000000UL
#define LOGMAX (64 * 1024)

static char logbuf[LOGMAX];

static void wait_ms(uint64_t ms)
{
    uint64_t khz = libos_tsc_khz ? libos_tsc_khz : 2000000;
    uint64_t end = rdtsc() + ms * khz;
    while (rdtsc() < end)
        cpu_relax();
}

int main(int argc, char **argv)
{
    uint64_t n = argc > 1 ? (uint64_t)atoi(argv[1]) : 50;
    uint64_t ms = argc > 2 ? (uint64_t)atoi(argv[2]) : 20;
    int disk = fsh_init(1) == 0;
    if (disk)
        fs_remove("/ticker.log");
    uint64_t used = 0;
    int bad = 0;
    char last[XOMB_KINFO_VERSION_MAX] = "", now[XOMB_KINFO_VERSION_MAX];
    char line[128];
    long refusal = xomb_release(99, 0, 0).rv;
    for (uint64_t i = 1; i <= n; i++) {
        kernel_version(now);            /* a snapshot: the kernel may change at any time */
        if (strcmp(now, last) != 0) {
            if (last[0])
                printf("ticker: kernel now %s\n", now);
            memcpy(last, now, sizeof(last));
        }
        long e = xomb_release(99, 0, 0).rv;
        if (e != refusal) {
            printf("ticker: release(99) now says %s\n", xomb_errname(e));
            refusal = e;
        }
        long r = page_alloc_at(0, SCRATCH, XOMB_MAP_W);
        if (r < 0) {
            printf("ticker: page_alloc_at: %s\n", xomb_errname(r));
            bad++;
        } else {
            volatile uint64_t *p = (volatile uint64_t *)SCRATCH;
            p[0] = i;
            bad += p[0] != i;
            page_free(SCRATCH);
        }
        int len = snprintf(line, sizeof(line), "tick %lu kernel=%s\n", i, last);
        printf("%s", line);
        if (disk && used + (uint64_t)len <= LOGMAX) {
            if (fs_pwrite("/ticker.log", used, line, (uint64_t)len) < 0)
                bad++;
            memcpy(logbuf + used, line, (size_t)len);
            used += (uint64_t)len;
        }
        wait_ms(ms);
    }
    if (disk) {
        char *got = malloc(LOGMAX);
        long r = got ? fs_read("/ticker.log", got, LOGMAX) : -1;
        int same = r == (long)used && memcmp(got, logbuf, used) == 0;
        printf("ticker: /ticker.log %s (%ld bytes)\n", same ? "intact" : "DIFFERS", r);
        bad += !same;
    }
    printf("ticker: done %lu ticks, %d errors\n", n, bad);
    return bad != 0;
}
