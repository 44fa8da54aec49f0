/* dmatest: a hostile disk driver.  It points its VF's DMA at memory it does
 * not hold or may not write, and sends malformed commands; every one must be
 * refused (an IOMMU fault delivered to us, or an error completion) and the
 * system must keep running.  Run it from xsh (which lends it a spare VF).
 */
#include "xomb.h"

static struct disk d;
static int passed, failed;
static uint8_t buf[8 * 4096] __attribute__((aligned(4096)));
static unsigned upcalls;

static void on_fault(struct disk *dd, const struct disk_fault *f)
{
    (void)dd;
    (void)f;
    upcalls++;
}

static void check(const char *what, int ok, const char *detail)
{
    printf("%s %-52s %s\n", ok ? "PASS" : "FAIL", what, detail);
    if (ok)
        passed++;
    else
        failed++;
}

/* A read command (the device writes memory) at addr: must fault, once. */
static void attack(const char *what, uint64_t addr, unsigned reason, unsigned access)
{
    disk_new_faults(&d);
    int st = disk_io(&d, XOMB_DOP_READ, 0, 1, (void *)addr);
    uint64_t nf = disk_new_faults(&d);
    struct disk_fault *f = &d.faults[(d.faults_seen - 1) % d.fault_n];
    char det[96];
    snprintf(det, sizeof(det), "%s, fault: %s at 0x%lx reason %u", disk_status_name(st),
             nf ? "yes" : "no", nf ? f->address : 0, nf ? f->reason : 0);
    int good = st == XOMB_DST_IOMMU_FAULT && nf == 1 && f->reason == reason &&
               f->access == access && f->endpoint == d.vf;
    check(what, good, det);
    if (!good)
        printf("  last: status %x cid %u head %u\n", d.last.status, d.last.cid, d.last.sq_head);
    if (!good)
        for (unsigned i = 0; i < d.qsize; i++)
            printf("  cq[%u] = res %u head %u cid %u status %x   (cq_head %u) sq %u/%u\n", i,
                   d.cq[i].result, d.cq[i].sq_head, d.cq[i].cid, d.cq[i].status, d.cq_head,
                   d.sq_tail, DS32(&d, XOMB_DS_SQ_HEAD));
}

static void malformed(const char *what, unsigned op, uint64_t lba, uint32_t n, unsigned want)
{
    int st = disk_io(&d, op, lba, n, buf);
    check(what, st == (int)want, disk_status_name(st));
    if (st != (int)want)
        printf("  last: status %x cid %u head %u\n", d.last.status, d.last.cid, d.last.sq_head);
    if (st != (int)want)
        for (unsigned i = 0; i < d.qsize; i++)
            printf("  cq[%u] = res %u head %u cid %u status %x   (cq_head %u)\n", i,
                   d.cq[i].result, d.cq[i].sq_head, d.cq[i].cid, d.cq[i].status, d.cq_head);
}

int main(int argc, char **argv)
{
    long r = disk_open(&d, XOMB_DISK_VF_VA, XOMB_DISK_QUEUE_VA, 8);
    if (r < 0) {
        printf("dmatest: no disk VF (%s): run it from xsh booted with --disk\n",
               xomb_errname(r));
        return 2;
    }
    printf("dmatest: VF %u, %lu blocks, queue of %u\n", d.vf, d.nblocks, d.qsize);
    disk_on_fault(&d, on_fault);

    /* A legitimate write then read, to know the device works for us. */
    for (int i = 0; i < 4096; i++)
        buf[i] = (uint8_t)(i * 7 + 1);
    int w = disk_io(&d, XOMB_DOP_WRITE, 0, 1, buf);
    memset(buf + 4096, 0, 4096);
    int rd = disk_io(&d, XOMB_DOP_READ, 0, 1, buf + 4096);
    check("own namespace: write + read back", w == 0 && rd == 0 && !memcmp(buf, buf + 4096, 4096),
          disk_status_name(w ? w : rd));

    /* DMA attacks. */
    attack("DMA into kernel memory (KBASE + 1 MiB)", XOMB_KBASE + 0x100000,
           XOMB_IOMMU_KERNEL, XOMB_IOMMU_W);
    attack("DMA into the frame table (user-readable)", XOMB_FRAMES_VA, XOMB_IOMMU_KERNEL,
           XOMB_IOMMU_W);
    attack("DMA into our page tables (self-map)", XOMB_SELF_PT, XOMB_IOMMU_KERNEL,
           XOMB_IOMMU_W);
    uint64_t parent = vm_handle_root(1);
    attack("DMA at the parent's root (phys as address)", parent, XOMB_IOMMU_NOT_MAPPED,
           XOMB_IOMMU_W);
    attack("DMA into init's window (another AS's memory)", XOMB_WINDOW_VA + parent,
           XOMB_IOMMU_NOT_MAPPED, XOMB_IOMMU_W);
    attack("DMA into unmapped memory", 0x500000000000UL, XOMB_IOMMU_NOT_MAPPED, XOMB_IOMMU_W);
    uint64_t text = XOMB_PROGRAM_VA;
    uint8_t before[64];
    memcpy(before, (void *)text, sizeof(before));
    attack("DMA into our own read-only code page", text, XOMB_IOMMU_READ_ONLY, XOMB_IOMMU_W);
    check("  ... and the code page is untouched", !memcmp(before, (void *)text, sizeof(before)),
          "");
    attack("DMA into the shared read-only boot archive", XOMB_INITRD_VA, XOMB_IOMMU_READ_ONLY,
           XOMB_IOMMU_W);
    attack("DMA into a device page (our VF registers)", XOMB_DISK_VF_VA, XOMB_IOMMU_NOT_RAM,
           XOMB_IOMMU_W);
    /* A buffer that starts in our memory and runs off its end: nothing moves. */
    uint64_t edge = XOMB_STACK_TOP - 2048;
    attack("DMA running off the top of our stack", edge + 0, XOMB_IOMMU_NOT_MAPPED,
           XOMB_IOMMU_W);

    /* Malformed commands. */
    malformed("bad opcode", 0x77, 0, 1, XOMB_DST_BAD_OPCODE);
    malformed("LBA out of range (= namespace size)", XOMB_DOP_READ, d.nblocks, 1,
              XOMB_DST_LBA_RANGE);
    malformed("LBA + length wraps around", XOMB_DOP_WRITE, ~0UL, 2, XOMB_DST_LBA_RANGE);
    malformed("huge length (100000 blocks)", XOMB_DOP_READ, 0, 100000, XOMB_DST_TOO_LONG);
    malformed("zero length", XOMB_DOP_READ, 0, 0, XOMB_DST_TOO_LONG);
    malformed("discard out of range", XOMB_DOP_DISCARD, d.nblocks - 1, 2, XOMB_DST_LBA_RANGE);

    /* A doorbell beyond the ring: the tail claims more entries than exist. */
    uint32_t bogus = d.sq_tail + d.qsize + 5;
    DS32(&d, XOMB_DS_SQ_TAIL) = bogus;
    __asm__ volatile("mfence" ::: "memory");
    *(volatile uint32_t *)(d.regs + XOMB_VF_DOORBELL) = 1;
    struct disk_cqe c;
    uint64_t t0 = rdtsc();
    while (!disk_reap(&d, &c) && rdtsc() - t0 < 30000000000UL)
        cpu_relax();
    d.sq_tail = bogus;                  /* the device skipped to it */
    d.completed = d.submitted;
    check("doorbell beyond the ring", (c.status >> 1) == XOMB_DST_BAD_DOORBELL && c.cid == 0xFFFF,
          disk_status_name(c.status >> 1));

    /* Queue overflow: fill the SQ, do not reap; more follow once we do. */
    for (unsigned i = 0; i < d.qsize; i++)
        disk_submit(&d, XOMB_DOP_READ, (uint16_t)(100 + i), i % 4, 1, (uint64_t)buf + 8192);
    int over = disk_submit(&d, XOMB_DOP_READ, 999, 0, 1, (uint64_t)buf);
    disk_kick(&d);
    unsigned got = 0, ok = 0;
    t0 = rdtsc();
    while (got < d.qsize && rdtsc() - t0 < 30000000000UL)
        if (disk_reap(&d, &c)) {
            got++;
            ok += (c.status >> 1) == 0;
        }
    check("full queue: the driver refuses the extra command", over == -1, "");
    check("full queue: every queued command completes", got == d.qsize && ok == d.qsize, "");

    /* Still alive: a normal command works after all that. */
    rd = disk_io(&d, XOMB_DOP_READ, 0, 1, buf + 4096);
    check("the device still serves us", rd == 0 && !memcmp(buf, buf + 4096, 4096),
          disk_status_name(rd));
    check("every fault reached the fault upcall", upcalls == DS64(&d, XOMB_DS_FAULTS), "");
    int fl = disk_flush(&d);
    check("flush", fl == 0, disk_status_name(fl));
    printf("dmatest: %d passed, %d failed, %lu IOMMU faults delivered\n", passed, failed,
           DS64(&d, XOMB_DS_FAULTS));
    disk_close(&d);
    return failed ? 1 : 0;
}
