/* The NIC driver (see nic.h). */
#include "nic.h"
#include "console.h"
#include "libos.h"
#include "mem.h"
#include "string.h"
#include "syscall.h"
#include "upcall.h"
#include "vm.h"

static inline void mfence(void) { __asm__ volatile("mfence" ::: "memory"); }

uint64_t time_us(void)
{
    uint64_t khz = libos_tsc_khz ? libos_tsc_khz : 3000000, t = rdtsc();
    return t / khz * 1000 + t % khz * 1000 / khz;
}

static uint64_t vf_va(unsigned vf) { return XOMB_NIC_VF_VA + (uint64_t)vf * PAGE_SIZE; }

int nic_holds(unsigned vf) { return vf < XOMB_NIC_MAX_VFS && vm_mapped(vf_va(vf)); }

/* Our pages at va.. (allocated from the pool unless already there), zeroed. */
static long ensure_pages(uint64_t va, uint64_t pages)
{
    for (uint64_t i = 0; i < pages; i++, va += PAGE_SIZE) {
        if (!vm_mapped(va)) {
            long r = page_alloc_at(XOMB_AS_SELF, va, XOMB_MAP_W);
            if (r < 0)
                return r;
        }
        memset((void *)va, 0, PAGE_SIZE);
    }
    return 0;
}

long nic_open(struct nic *n, unsigned vf)
{
    memset(n, 0, sizeof(*n));
    if (!nic_holds(vf))
        return -XOMB_ENOTHELD;
    uint32_t q = XOMB_NIC_QSIZE;
    uint64_t ring_pages = (q * XOMB_NDESC_SIZE + PAGE_SIZE - 1) / PAGE_SIZE;
    uint64_t buf_pages = q * NIC_BUF / PAGE_SIZE;
    uint64_t qva = XOMB_NIC_QUEUE_VA + (uint64_t)vf * XOMB_NIC_QUEUE_STRIDE;
    long r = ensure_pages(qva, 2 + 2 * ring_pages + 2 * buf_pages);
    if (r < 0)
        return r;
    n->vf = vf;
    n->qsize = q;
    n->regs = (volatile uint8_t *)vf_va(vf);
    n->st = (volatile uint8_t *)qva;
    n->faults = (void *)(qva + PAGE_SIZE);
    n->fault_n = PAGE_SIZE / XOMB_FAULT_REC;
    n->tx = (volatile struct nic_desc *)(qva + 2 * PAGE_SIZE);
    n->rx = (volatile struct nic_desc *)(qva + (2 + ring_pages) * PAGE_SIZE);
    n->txbuf = (uint8_t *)(qva + (2 + 2 * ring_pages) * PAGE_SIZE);
    n->rxbuf = n->txbuf + buf_pages * PAGE_SIZE;
    NS64(n, XOMB_NS_SETUP_VF_VA) = vf_va(vf);
    NS64(n, XOMB_NS_SETUP_TX_VA) = (uint64_t)n->tx;
    NS64(n, XOMB_NS_SETUP_RX_VA) = (uint64_t)n->rx;
    NS32(n, XOMB_NS_SETUP_QSIZE) = q;
    NS64(n, XOMB_NS_SETUP_FAULT_VA) = (uint64_t)n->faults;
    NS32(n, XOMB_NS_SETUP_FAULT_N) = n->fault_n;
    mfence();
    /* One VM exit: the device finds who we are (whose tables map the VF page)
     * and reads the setup above. */
    *(volatile uint64_t *)(n->regs + XOMB_NIC_ENABLE) = (uint64_t)n->st;
    mfence();
    if (NS32(n, XOMB_NS_STATE) != XOMB_DSTATE_READY) {
        n->regs = 0;
        return -XOMB_EINVAL;
    }
    for (int i = 0; i < 6; i++)
        n->mac[i] = n->st[XOMB_NS_MAC + i];
    for (uint32_t i = 0; i < q; i++) {      /* every RX buffer to the device */
        n->rx[i].buf = (uint64_t)(n->rxbuf + i * NIC_BUF);
        n->rx[i].buflen = NIC_BUF;
    }
    n->rx_tail = q;
    compiler_barrier();
    NS32(n, XOMB_NS_RX_TAIL) = n->rx_tail;
    return 0;
}

void nic_close(struct nic *n)
{
    /* Frames still in the TX ring go out first (a bounded wait: a device that
     * unbound us, or a broken link, must not hang the close). */
    uint64_t end = time_us() + NIC_CLOSE_DRAIN_US;
    while (n->regs && NS32(n, XOMB_NS_TX_HEAD) != n->tx_tail &&
           NS32(n, XOMB_NS_STATE) == XOMB_DSTATE_READY && time_us() < end)
        cpu_relax();
    if (n->regs)
        *(volatile uint32_t *)(n->regs + XOMB_NIC_DISABLE) = 1;
    n->regs = 0;
}

int nic_send(struct nic *n, const void *frame, unsigned len)
{
    if (!n->regs || len > NIC_MTU_FRAME)
        return -1;
    if (n->tx_tail - NS32(n, XOMB_NS_TX_HEAD) >= n->qsize) {
        n->tx_full++;
        return -2;
    }
    uint32_t slot = n->tx_tail % n->qsize;
    uint8_t *b = n->txbuf + (uint64_t)slot * NIC_BUF;
    memcpy(b, frame, len);
    n->tx[slot].buf = (uint64_t)b;
    n->tx[slot].len = (uint16_t)len;
    n->tx[slot].status = 0;
    compiler_barrier();                 /* descriptor before the tail (x86 is TSO) */
    NS32(n, XOMB_NS_TX_TAIL) = ++n->tx_tail;
    mfence();                           /* the tail before reading `waiting` */
    uint32_t w = NS32(n, XOMB_NS_WAITING);
    if (w && w != n->rang) {            /* asleep, and not yet rung for this sleep */
        *(volatile uint32_t *)(n->regs + XOMB_NIC_DOORBELL) = 1;
        n->rang = w;
        n->doorbells++;
    }
    n->sent++;
    return 0;
}

int nic_rx_pending(struct nic *n)
{
    return n->regs && n->rx_next != NS32(n, XOMB_NS_RX_HEAD);
}

int nic_recv(struct nic *n, void *buf, unsigned cap)
{
    while (nic_rx_pending(n)) {
        compiler_barrier();             /* the head before the descriptor it covers */
        volatile struct nic_desc *d = &n->rx[n->rx_next % n->qsize];
        uint8_t *mine = n->rxbuf + (uint64_t)(n->rx_next % n->qsize) * NIC_BUF;
        unsigned len = d->len, ok = (d->status & ~XOMB_NST_DONE) == XOMB_NST_OK;
        if (len > NIC_BUF || d->buf != (uint64_t)mine)
            ok = 0;                     /* only ever read our own buffer */
        if (ok) {
            if (len > cap)
                len = cap;
            memcpy(buf, mine, len);
        } else {
            n->rx_errors++;
        }
        d->buf = (uint64_t)mine;
        d->buflen = NIC_BUF;
        d->len = 0;
        d->status = 0;
        n->rx_next++;
        compiler_barrier();
        NS32(n, XOMB_NS_RX_TAIL) = ++n->rx_tail;    /* the buffer goes back */
        if (ok) {
            n->received++;
            return (int)len;
        }
    }
    return 0;
}

void nic_use_interrupts(struct nic *n, int on)
{
    n->use_irq = on;
}

void nic_wait(struct nic *n, uint64_t timeout_us)
{
    uint64_t end = time_us() + timeout_us;
    while (!nic_rx_pending(n) && time_us() < end) {
        if (!n->use_irq || !n->regs) {
            cpu_relax();
            continue;
        }
        /* Ask for the interrupt, then look once more: a frame that arrives after
         * the look raises it, and the kernel checks before halting, so it is not
         * lost.  A tick wakes us too, so the timeout holds (to a tick). */
        NS32(n, XOMB_NS_IRQ) = 1;
        mfence();
        if (!nic_rx_pending(n))
            cpu_wait_tick(libos_home_cpu);
        NS32(n, XOMB_NS_IRQ) = 0;
        __atomic_fetch_and(&upcall_irq_pending, ~(1ULL << (XOMB_DEV_NIC_VF0 + n->vf)),
                           __ATOMIC_SEQ_CST);
    }
}

/* The boot-info device table entry of the NIC (root only), or 0. */
static const uint32_t *devtab_nic(void)
{
    if (!libos_bootinfo)
        return 0;
    const uint8_t *t = (const uint8_t *)libos_bootinfo + XOMB_BOOTINFO_DEVTAB;
    uint32_t cnt = *(const uint32_t *)t;
    for (uint32_t i = 0; i < cnt && i < XOMB_DEVTAB_MAX; i++) {
        const uint32_t *e = (const uint32_t *)(t + 8 + i * XOMB_DEVTAB_ENTRY);
        if (e[0] == XOMB_DEVT_NIC && e[1] == XOMB_DEV_NIC_VF0)
            return e;
    }
    return 0;
}

int net_config(struct nic *n, struct net_config *out)
{
    memset(out, 0, sizeof(*out));
    if (n && n->regs) {                 /* the device wrote it into our status page */
        memcpy(out->mac, n->mac, 6);
        out->ip = NS32(n, XOMB_NS_IP);
        out->gateway = NS32(n, XOMB_NS_GATEWAY);
        out->prefix = NS32(n, XOMB_NS_PREFIX);
        return 0;
    }
    const uint32_t *e = devtab_nic();
    if (!e)
        return -XOMB_ENOTHELD;
    out->ip = e[3];
    out->gateway = e[4];
    out->prefix = e[5];
    memcpy(out->mac, e + 6, 6);         /* VF 0's; VF i's last byte is + i */
    return 0;
}

unsigned nic_vf_count(void)
{
    const uint32_t *e = devtab_nic();
    if (e)
        return e[2];
    unsigned k = 0;                     /* not the root: the VFs we hold */
    for (unsigned vf = 0; vf < XOMB_NIC_MAX_VFS; vf++)
        k += nic_holds(vf);
    return k;
}

static uint32_t lent;                   /* VFs nic_grant moved out of our own slots */

long nic_grant(long as, unsigned vf)
{
    uint64_t src;
    if (vf >= XOMB_NIC_MAX_VFS)
        return -XOMB_EINVAL;
    if (nic_holds(vf)) {
        src = vf_va(vf);
    } else {
        const uint32_t *e = devtab_nic();
        if (!e || vf >= e[2])
            return -XOMB_ENOTHELD;
        src = XOMB_WINDOW_VA + (libos_bootinfo->dev_pfn + XOMB_DEV_NIC_VF0 + vf) * PAGE_SIZE;
        if (!vm_mapped(src))
            return -XOMB_ENOTHELD;
    }
    long r = mem_ensure_tables(as, vf_va(vf));
    if (r < 0)
        return r;
    r = xomb_map(as, vf_va(vf), XOMB_AS_SELF, src, 1, XOMB_MAP_W | XOMB_MAP_MOVE).rv;
    if (r == 0 && src == vf_va(vf))
        lent |= 1u << vf;
    return r;
}

void nic_grant_all(long as)
{
    const uint32_t *e = devtab_nic();
    for (unsigned vf = 0; vf < XOMB_NIC_MAX_VFS; vf++) {
        if (!nic_holds(vf) && !(e && vf < e[2]))
            continue;
        long r = nic_grant(as, vf);
        if (r < 0)
            printf("[%s] cannot grant NIC VF %u: %s\n", libos_name, vf, xomb_errname(r));
    }
}

void nic_take_back(long as)
{
    for (unsigned vf = 0; vf < XOMB_NIC_MAX_VFS; vf++) {
        if (!(lent & (1u << vf)) || nic_holds(vf))
            continue;
        /* fails (ENOTHELD) if `as` does not hold it (another child, or it died) */
        if (xomb_map(XOMB_AS_SELF, vf_va(vf), as, vf_va(vf), 1,
                     XOMB_MAP_W | XOMB_MAP_MOVE).rv == 0)
            lent &= ~(1u << vf);
    }
}
