/* The disk driver (see disk.h). */
#include "disk.h"
#include "upcall.h"
#include "libos.h"
#include "mem.h"
#include "string.h"
#include "syscall.h"
#include "vm.h"
#include "console.h"

static inline void mfence(void) { __asm__ volatile("mfence" ::: "memory"); }

const char *disk_status_name(unsigned code)
{
    switch (code) {
    case XOMB_DST_OK: return "ok";
    case XOMB_DST_BAD_OPCODE: return "bad opcode";
    case XOMB_DST_LBA_RANGE: return "LBA out of range";
    case XOMB_DST_TOO_LONG: return "too long";
    case XOMB_DST_IOMMU_FAULT: return "IOMMU fault";
    case XOMB_DST_IO_ERROR: return "I/O error";
    case XOMB_DST_BAD_DOORBELL: return "doorbell beyond the ring";
    case DISK_TIMEOUT: return "timeout";
    default: return "?";
    }
}

long disk_open(struct disk *d, uint64_t vf_va, uint64_t qva, uint32_t qsize)
{
    memset(d, 0, sizeof(*d));
    if (!vm_mapped(vf_va))
        return -XOMB_ENOTHELD;
    uint64_t sq_pages = (qsize * XOMB_SQE_SIZE + PAGE_SIZE - 1) / PAGE_SIZE;
    uint64_t cq_pages = (qsize * XOMB_CQE_SIZE + PAGE_SIZE - 1) / PAGE_SIZE;
    uint64_t pages = 1 + sq_pages + cq_pages + 1;
    for (uint64_t i = 0; i < pages; i++) {
        uint64_t va = qva + i * PAGE_SIZE;
        if (!vm_mapped(va)) {
            long r = page_alloc_at(XOMB_AS_SELF, va, XOMB_MAP_W);
            if (r < 0)
                return r;
        }
        memset((void *)va, 0, PAGE_SIZE);
    }
    d->regs = (volatile uint8_t *)vf_va;
    d->st = (volatile uint8_t *)qva;
    d->sq = (volatile uint8_t *)(qva + PAGE_SIZE);
    d->cq = (volatile struct disk_cqe *)(qva + (1 + sq_pages) * PAGE_SIZE);
    d->faults = (struct disk_fault *)(qva + (1 + sq_pages + cq_pages) * PAGE_SIZE);
    d->fault_n = PAGE_SIZE / XOMB_FAULT_REC;
    d->qsize = qsize;
    DS64(d, XOMB_DS_SETUP_VF_VA) = vf_va;
    DS64(d, XOMB_DS_SETUP_SQ_VA) = (uint64_t)d->sq;
    DS64(d, XOMB_DS_SETUP_CQ_VA) = (uint64_t)d->cq;
    DS32(d, XOMB_DS_SETUP_QSIZE) = qsize;
    DS64(d, XOMB_DS_SETUP_FAULT_VA) = (uint64_t)d->faults;
    DS32(d, XOMB_DS_SETUP_FAULT_N) = d->fault_n;
    mfence();
    /* One VM exit: the device finds who we are (whose tables map the VF page)
     * and reads the setup above. */
    *(volatile uint64_t *)(d->regs + XOMB_VF_ENABLE) = qva;
    mfence();
    if (DS32(d, XOMB_DS_STATE) != XOMB_DSTATE_READY)
        return -XOMB_EINVAL;
    d->nblocks = DS64(d, XOMB_DS_NS_BLOCKS);
    d->max_blocks = DS32(d, XOMB_DS_MAX_BLOCKS);
    d->vf = DS32(d, XOMB_DS_VF);
    return 0;
}

void disk_close(struct disk *d)
{
    if (d->regs)
        *(volatile uint32_t *)(d->regs + XOMB_VF_DISABLE) = 1;
    d->regs = 0;
}

int disk_submit(struct disk *d, unsigned op, uint16_t cid, uint64_t lba, uint32_t nblocks,
                uint64_t buf)
{
    /* LAB 5 BEGIN STUB: return -1; */
    if (disk_inflight(d) >= d->qsize)
        return -1;
    volatile uint8_t *e = d->sq + (d->sq_tail % d->qsize) * XOMB_SQE_SIZE;
    *(volatile uint8_t *)(e + XOMB_SQE_OPCODE) = (uint8_t)op;
    *(volatile uint8_t *)(e + 1) = 0;
    *(volatile uint16_t *)(e + XOMB_SQE_CID) = cid;
    *(volatile uint32_t *)(e + XOMB_SQE_NBLOCKS) = nblocks;
    *(volatile uint64_t *)(e + XOMB_SQE_LBA) = lba;
    *(volatile uint64_t *)(e + XOMB_SQE_BUF) = buf;
    d->sq_tail++;
    d->submitted++;
    return 0;
    /* LAB 5 END */
}

void disk_kick(struct disk *d)
{
    compiler_barrier();                 /* entries before the tail (x86 is TSO) */
    DS32(d, XOMB_DS_SQ_TAIL) = d->sq_tail;
    mfence();                           /* the tail before reading `waiting` */
    if (DS32(d, XOMB_DS_WAITING)) {
        *(volatile uint32_t *)(d->regs + XOMB_VF_DOORBELL) = 1;
        d->doorbells++;
    }
}

int disk_reap(struct disk *d, struct disk_cqe *out)
{
    volatile struct disk_cqe *c = &d->cq[d->cq_head % d->qsize];
    /* LAB 5 BEGIN STUB: uint16_t status = c->status; */
    uint16_t phase = ((d->cq_head / d->qsize) & 1) ^ 1;
    uint16_t status = c->status;
    if ((status & 1) != phase)
        return 0;
    /* LAB 5 END */
    compiler_barrier();
    if (out) {
        out->result = c->result;
        out->sq_head = c->sq_head;
        out->cid = c->cid;
        out->status = status;
    }
    d->cq_head++;
    d->completed++;
    DS32(d, XOMB_DS_CQ_HEAD) = d->cq_head;
    if ((status >> 1) == XOMB_DST_IOMMU_FAULT && d->on_fault) {
        uint64_t n = DS64(d, XOMB_DS_FAULTS);
        for (; d->faults_delivered < n; d->faults_delivered++)
            d->on_fault(d, &d->faults[d->faults_delivered % d->fault_n]);
    }
    return 1;
}

void disk_use_interrupts(struct disk *d, int on)
{
    d->use_irq = on;
    DS32(d, XOMB_DS_IRQ) = (uint32_t)on;
}

void disk_wait(struct disk *d)
{
    /* A completion posted after our last look is not lost: its interrupt is
     * already pending on this CPU, and the kernel checks before halting. */
    if (!d->use_irq || cpu_wait_tick(libos_home_cpu) < 0)
        cpu_relax();
    __atomic_fetch_and(&upcall_irq_pending, ~(1ULL << (XOMB_DEV_DISK_VF0 + d->vf)),
                       __ATOMIC_SEQ_CST);
}

int disk_io(struct disk *d, unsigned op, uint64_t lba, uint32_t nblocks, void *buf)
{
    struct disk_cqe c;
    while (disk_inflight(d))            /* synchronous callers own the queue */
        if (!disk_reap(d, 0))
            disk_wait(d);
    if (disk_submit(d, op, 1, lba, nblocks, (uint64_t)buf) < 0)
        return XOMB_DST_BAD_DOORBELL;
    disk_kick(d);
    uint64_t khz = libos_tsc_khz ? libos_tsc_khz : 3000000;
    uint64_t deadline = rdtsc() + khz * 10000;          /* 10 s */
    while (!disk_reap(d, &c)) {
        if (rdtsc() > deadline)
            return DISK_TIMEOUT;
        disk_wait(d);
    }
    d->last = c;
    return c.status >> 1;
}

uint64_t disk_new_faults(struct disk *d)
{
    uint64_t n = DS64(d, XOMB_DS_FAULTS);
    uint64_t fresh = n - d->faults_seen;
    d->faults_seen = n;
    return fresh;
}

long disk_move_vf(long to_as, uint64_t to_va, long from_as, uint64_t from_va)
{
    long r = mem_ensure_tables(to_as, to_va);
    if (r < 0)
        return r;
    return xomb_map(to_as, to_va, from_as, from_va, 1, XOMB_MAP_W | XOMB_MAP_MOVE).rv;
}

unsigned disk_vf_count(void)
{
    if (!libos_bootinfo)
        return 0;
    const uint8_t *t = (const uint8_t *)libos_bootinfo + XOMB_BOOTINFO_DEVTAB;
    uint32_t n = *(const uint32_t *)t;
    for (uint32_t i = 0; i < n && i < XOMB_DEVTAB_MAX; i++) {
        const uint32_t *e = (const uint32_t *)(t + 8 + i * XOMB_DEVTAB_ENTRY);
        if (e[0] == XOMB_DEVT_DISK && e[1] == XOMB_DEV_DISK_VF0)
            return e[2];
    }
    return 0;
}

long disk_grant_from_window(long as, unsigned vf, uint64_t va)
{
    if (!libos_bootinfo || vf >= disk_vf_count())
        return -XOMB_EINVAL;
    uint64_t pfn = libos_bootinfo->dev_pfn + XOMB_DEV_DISK_VF0 + vf;
    return disk_move_vf(as, va, XOMB_AS_SELF, XOMB_WINDOW_VA + pfn * PAGE_SIZE);
}

void disk_grant_all(long as)
{
    unsigned n = disk_vf_count();
    for (unsigned vf = 0; vf < n; vf++) {
        uint64_t va = vf == 0 ? XOMB_DISK_VF_VA : XOMB_DISK_SPARE_VA + (vf - 1) * PAGE_SIZE;
        long r = disk_grant_from_window(as, vf, va);
        if (r < 0)
            printf("[%s] cannot grant disk VF %u: %s\n", libos_name, vf, xomb_errname(r));
    }
}
