/* The disk driver: one virtual function of the self-virtualizing disk
 * (devices/disk.py, docs/DEVICES.md).
 *
 * Everything the device touches is in our own memory and named by our own
 * virtual addresses (shared virtual addressing: the IOMMU walks our page
 * tables): the status page, the submission queue (64-byte commands), the
 * completion queue (16-byte entries with a phase bit) and the fault ring.
 * The register page (the VF) is just a mapped page: a doorbell write there
 * is absorbed by KVM (ioeventfd) and never exits to the VMM, and we ring it
 * only when the device says it sleeps (DS_WAITING).  Completions are polled.
 */
#pragma once
#include <stdint.h>
#include "xomb_abi.h"

#define DISK_TIMEOUT 0x100      /* a libOS status: no completion in time */

struct disk_cqe {
    uint32_t result;            /* bytes moved */
    uint16_t sq_head, cid;
    uint16_t status;            /* XOMB_DST_* << 1 | phase */
    uint16_t rsvd;
    uint32_t rsvd2;
};

struct disk_fault {             /* XOMB_FAULT_REC bytes */
    uint64_t address;
    uint32_t endpoint, access, reason, seq;
    uint64_t rsvd;
};

struct disk;
/* An IOMMU fault "upcall": called from disk_reap() for each new fault record. */
typedef void (*disk_fault_fn)(struct disk *d, const struct disk_fault *f);

struct disk {
    volatile uint8_t *regs;     /* the VF register page */
    volatile uint8_t *st;       /* status page */
    volatile uint8_t *sq;
    volatile struct disk_cqe *cq;
    struct disk_fault *faults;
    uint32_t qsize, sq_tail, cq_head, fault_n;
    uint32_t submitted, completed;  /* commands (in flight = the difference) */
    uint64_t nblocks;           /* in this VF's namespace */
    uint32_t max_blocks, vf;
    uint64_t faults_seen;       /* DS_FAULTS we have already reported */
    uint64_t doorbells;         /* how often we rang */
    struct disk_cqe last;       /* the last completion disk_io() took */
    disk_fault_fn on_fault;     /* see disk_on_fault() */
    uint64_t faults_delivered;  /* records handed to on_fault */
    int use_irq;                /* wait for completions by interrupt, not by polling */
};

#define DS32(d, off) (*(volatile uint32_t *)((d)->st + (off)))
#define DS64(d, off) (*(volatile uint64_t *)((d)->st + (off)))

/* Set up queues at qva (status page, SQ, CQ, fault ring: allocated from our
 * pool) for the VF mapped at vf_va and bind it.  0 or a negative error. */
long disk_open(struct disk *d, uint64_t vf_va, uint64_t qva, uint32_t qsize);
void disk_close(struct disk *d);
/* The driver's choice: 1 = the device interrupts us after completions and
 * faults and we halt our CPU while we wait (YIELD IDLE, woken by the
 * INTERRUPT upcall); 0 (the default) = we poll. */
void disk_use_interrupts(struct disk *d, int on);
/* Wait a little for the device: by interrupt or by a pause, as chosen. */
void disk_wait(struct disk *d);

/* Queue one command (no doorbell yet): 0, or -1 if qsize are outstanding. */
int disk_submit(struct disk *d, unsigned op, uint16_t cid, uint64_t lba, uint32_t nblocks,
                uint64_t buf);
/* Publish the submissions and ring the doorbell if the device sleeps. */
void disk_kick(struct disk *d);
/* Take one completion if there is one: 1, else 0. */
int disk_reap(struct disk *d, struct disk_cqe *out);
/* Commands submitted and not yet reaped. */
static inline uint32_t disk_inflight(const struct disk *d) { return d->submitted - d->completed; }
/* Synchronous: submit, kick, wait.  XOMB_DST_* status (0 ok) or DISK_TIMEOUT. */
int disk_io(struct disk *d, unsigned op, uint64_t lba, uint32_t nblocks, void *buf);
static inline int disk_flush(struct disk *d) { return disk_io(d, XOMB_DOP_FLUSH, 0, 0, 0); }

/* IOMMU faults the device reported since the last call (the polled upcall);
 * the records are in d->faults[(seq-1) % fault_n]. */
uint64_t disk_new_faults(struct disk *d);
/* Deliver IOMMU faults as calls of fn (from disk_reap, when a completion
 * says DST_IOMMU_FAULT): the polled form of the fault upcall until
 * completions can raise interrupts. */
static inline void disk_on_fault(struct disk *d, disk_fault_fn fn) { d->on_fault = fn; }
const char *disk_status_name(unsigned code);

/* Granting (libOS policy): the root moves VF `vf` from its window to `as`
 * at va; anyone moves the page it maps at from_va. */
long disk_grant_from_window(long as, unsigned vf, uint64_t va);
long disk_move_vf(long to_as, uint64_t to_va, long from_as, uint64_t from_va);
/* The boot-info device table: number of disk VFs (root only), else 0. */
unsigned disk_vf_count(void);
/* Root policy: VF 0 to `as` at DISK_VF_VA, the others at DISK_SPARE_VA.. for it
 * to lend to its children. */
void disk_grant_all(long as);
