"""cffi (API mode) build of the NIC's native data path (devices/nic_native.py uses it).

The C below does the NIC's per-frame work with the GIL released: drain a VF's TX ring,
translate descriptors and buffers through the owner's page tables (exactly the rules of
devices/iommu.py's check_page), check the source MAC, switch by destination MAC (the
rules of devices/nic.py's Switch.route), copy into the destination's RX ring, write the
TAP, read it, and raise interrupts through the VF's irqfd.

It handles only the common case.  Anything unusual -- an IOMMU fault, a malformed
descriptor, a tail beyond the ring, a runt or oversized frame, a spoofed source MAC, an
unbound VF, a binding that no longer holds -- stops the native work *before* it changes
anything for that frame and hands the rest to the Python code (the reference), which then
writes the fault record, the log, the counters exactly as it always has.

Locking: each VF has one pthread mutex; Python's `with vf.lock` takes the same mutex
(devices/nic_native.py NativeLock), so the binding fields below, which live here, are
only changed or read under it.  Nothing ever holds two VF mutexes.

Built by `pip install -e .` (setup.py: cffi_modules) or on the fly by devices/nic_native.py.
"""
from cffi import FFI

from vmm import abi

MAX_STAGE = abi.NIC_MAX_QSIZE           # frames one TX batch may stage

CDEF = r"""
#define NIC_FALLBACK ...
#define NIC_DID ...
#define NIC_IDLE ...

struct nic_vf {
    int ready;
    uint64_t root, vf_va, status_va, frame_pa;
    uint64_t tx_va, rx_va;
    uint32_t qsize, tx_head, rx_head, sleeps;
    int irqfd;
    /* counters, added to the Python dicts (and zeroed) under the VF's lock */
    uint64_t tx_packets, tx_bytes, rx_packets, rx_bytes, rx_no_buffer, rx_too_big;
    uint64_t batches, interrupts, native_tx, native_rx, doorbells;
    ...;
};

struct nic {
    uint8_t *mem;
    uint64_t ram_bytes, nframes;
    int nvfs, has_uplink, tap_fd, stop;
    struct nic_vf vf[%(NIC_MAX_VFS)d];
    /* switch and uplink counters (atomic: several threads add) */
    uint64_t forwarded, flooded, to_uplink, no_route, up_tx, up_tx_errors, up_rx,
             up_runts, up_too_big;
    ...;
};

struct nic_stage {
    int nframes, nleft;
    uint16_t len[%(MAX_STAGE)d];
    int left_port[%(MAX_STAGE)d];
    int left_frame[%(MAX_STAGE)d];
    uint32_t irq_mask;
    ...;
};

int nic_init(struct nic *n);
void nic_lock(struct nic *n, int vf);
void nic_unlock(struct nic *n, int vf);
int nic_tx(struct nic *n, int vf, struct nic_stage *s);
int nic_uplink_rx(struct nic *n, struct nic_stage *s, int timeout_ms);
uint8_t *nic_frame(struct nic_stage *s, int k);
uint64_t nic_take(uint64_t *counter);
int nic_worker(struct nic *n, int vf, struct nic_stage *s, int efd, uint64_t spin_ns,
               int wait_ms);
int64_t nic_check_page(struct nic *n, uint64_t root, uint64_t va, int write);
"""

SOURCE = r"""
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NIC_MAX_VFS   %(NIC_MAX_VFS)d
#define NIC_STAGE_MAX %(MAX_STAGE)d
#define NIC_FALLBACK  1         /* Python must run its own batch (something unusual) */
#define NIC_DID       2         /* some work was done here */
#define NIC_IDLE      4         /* Python must idle (VfDevice.idle): no live binding */
#define UPLINK        NIC_MAX_VFS   /* the uplink's bit in a port mask */

#define PAGE          4096ULL
#define PTE_P         %(PTE_P)dULL
#define PTE_W         %(PTE_W)dULL
#define PTE_U         %(PTE_U)dULL
#define PTE_PS        %(PTE_PS)dULL
#define PTE_ADDR      %(PTE_ADDR)dULL
#define USER_LIMIT    %(USER_LIMIT)dULL
#define FRAMES_PHYS   %(FRAMES_PHYS)dULL
#define FT_SHIFT      %(FT_TYPE_SHIFT)d
#define FT_DATA       %(FT_DATA)d
#define FT_ROOT       %(FT_ROOT)d
#define MTU           %(NIC_MTU_FRAME)d
#define MIN_FRAME     %(NIC_MIN_FRAME)d
#define DESC          %(NDESC_SIZE)d
#define MAC_BASE      %(NIC_MAC_BASE)dULL

struct nic_vf {
    int ready;
    uint64_t root, vf_va, status_va, frame_pa;
    uint64_t tx_va, rx_va;
    uint32_t qsize, tx_head, rx_head, sleeps;
    int irqfd;
    uint64_t tx_packets, tx_bytes, rx_packets, rx_bytes, rx_no_buffer, rx_too_big;
    uint64_t batches, interrupts, native_tx, native_rx, doorbells;
    pthread_mutex_t mu;
};

struct nic {
    uint8_t *mem;
    uint64_t ram_bytes, nframes;
    int nvfs, has_uplink, tap_fd, stop;
    struct nic_vf vf[NIC_MAX_VFS];
    uint64_t forwarded, flooded, to_uplink, no_route, up_tx, up_tx_errors, up_rx,
             up_runts, up_too_big;
};

struct nic_stage {
    int nframes, nleft;
    uint16_t len[NIC_STAGE_MAX];
    uint32_t ports[NIC_STAGE_MAX];      /* where each staged frame goes (a bit per port) */
    int left_port[NIC_STAGE_MAX];       /* what Python must deliver itself */
    int left_frame[NIC_STAGE_MAX];
    uint32_t irq_mask;                  /* VFs to interrupt through Python (no irqfd) */
    uint8_t data[NIC_STAGE_MAX][MTU];
};

/* ------------------------------------------------------------- guest memory
 * The guest writes these words concurrently: every access is a single aligned
 * load or store (never torn, never a transient 0), and the stores that publish
 * are release stores so the compiler keeps them after the data they publish. */
static int rd64(struct nic *n, uint64_t pa, uint64_t *out)
{
    if (pa + 8 > n->ram_bytes)
        return -1;
    *out = __atomic_load_n((uint64_t *)(n->mem + pa), __ATOMIC_RELAXED);
    return 0;
}
static uint32_t ld32(struct nic *n, uint64_t pa)
{ return __atomic_load_n((uint32_t *)(n->mem + pa), __ATOMIC_ACQUIRE); }
static void st16(struct nic *n, uint64_t pa, uint16_t v)
{ __atomic_store_n((uint16_t *)(n->mem + pa), v, __ATOMIC_RELEASE); }
static void st32(struct nic *n, uint64_t pa, uint32_t v)
{ __atomic_store_n((uint32_t *)(n->mem + pa), v, __ATOMIC_RELEASE); }
static void bump64(struct nic *n, uint64_t pa, uint64_t k)
{
    uint64_t *p = (uint64_t *)(n->mem + pa);
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + k, __ATOMIC_RELEASE);
}

static int frame_type(struct nic *n, uint64_t pfn)
{
    uint64_t e;
    if (pfn >= n->nframes || rd64(n, FRAMES_PHYS + pfn * 8, &e))
        return -1;
    return (int)((e >> FT_SHIFT) & 0xFF);
}

/* iommu.py's leaf(): the 4 KiB frame of va and the W|U rights of every level. */
static int leaf(struct nic *n, uint64_t root, uint64_t va, uint64_t *pa, uint64_t *rights)
{
    static const int shifts[4] = {39, 30, 21, 12};
    uint64_t table = root & PTE_ADDR, r = PTE_W | PTE_U, e;
    if (va >= USER_LIMIT)
        return -1;
    for (int l = 0; l < 4; l++) {
        int sh = shifts[l];
        if (rd64(n, table + ((va >> sh) & 511) * 8, &e) || !(e & PTE_P))
            return -1;
        r &= e;
        if ((sh == 30 || sh == 21) && (e & PTE_PS)) {
            uint64_t size = 1ULL << sh;
            *pa = (e & PTE_ADDR & ~(size - 1)) | (va & (size - 1) & ~(PAGE - 1));
            *rights = r & (PTE_W | PTE_U);
            return 0;
        }
        table = e & PTE_ADDR;
    }
    *pa = table;
    *rights = r & (PTE_W | PTE_U);
    return 0;
}

/* iommu.py's check_page(): the RAM frame of page va for this access, or -1 (then
 * Python redoes it and makes the fault record). */
static int64_t check_page(struct nic *n, uint64_t root, uint64_t va, int write)
{
    uint64_t pa, rights;
    if (leaf(n, root, va, &pa, &rights))
        return -1;
    if (!(rights & PTE_U) || (write && !(rights & PTE_W)))
        return -1;
    if (pa + PAGE > n->ram_bytes || frame_type(n, pa >> 12) != FT_DATA)
        return -1;
    return (int64_t)pa;
}

/* Copy [va, va+len) of the owner's memory to dst (write=0) or from src into it
 * (write=1), a page at a time.  Every page is checked before any byte moves. */
static int dma(struct nic *n, uint64_t root, uint64_t va, uint32_t len, int write,
               uint8_t *buf)
{
    uint64_t pas[2 + MTU / PAGE];
    uint32_t k = 0;
    for (uint64_t p = va & ~(PAGE - 1); p < va + len; p += PAGE) {
        int64_t pa = check_page(n, root, p, write);
        if (pa < 0)
            return -1;
        pas[k++] = (uint64_t)pa;
    }
    uint32_t at = 0;
    for (uint32_t i = 0; at < len; i++) {
        uint64_t off = i == 0 ? (va & (PAGE - 1)) : 0;
        uint32_t c = (uint32_t)(PAGE - off);
        if (c > len - at)
            c = len - at;
        if (write)
            memcpy(n->mem + pas[i] + off, buf + at, c);
        else
            memcpy(buf + at, n->mem + pas[i] + off, c);
        at += c;
    }
    return 0;
}

/* A ring entry (16 bytes, 16-aligned: never crosses a page), written by the device. */
static int64_t entry(struct nic *n, struct nic_vf *v, uint64_t ring, uint32_t idx)
{
    uint64_t va = ring + (uint64_t)(idx & (v->qsize - 1)) * DESC;
    int64_t pa = check_page(n, v->root, va & ~(PAGE - 1), 1);
    return pa < 0 ? -1 : pa + (int64_t)(va & (PAGE - 1));
}

/* vf.py's live(): the status page's frame if the binding holds, else -1 (Python's
 * live() then unbinds and reports). */
static int64_t live(struct nic *n, struct nic_vf *v)
{
    uint64_t pa, rights;
    if (!v->ready || frame_type(n, v->root >> 12) != FT_ROOT)
        return -1;
    if (leaf(n, v->root, v->vf_va, &pa, &rights) || pa != v->frame_pa ||
        rights != (PTE_W | PTE_U))
        return -1;
    return check_page(n, v->root, v->status_va, 1);
}

static void interrupt(struct nic *n, int i, uint64_t spa, struct nic_stage *s)
{
    struct nic_vf *v = &n->vf[i];
    /* The fence: our stores (descriptors, RX_HEAD) before the IRQ-word load, against
     * the driver's IRQ-word store, fence, and its loads (vf.py interrupt()). */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (!ld32(n, spa + %(NS_IRQ)d))
        return;
    v->interrupts++;
    if (v->irqfd >= 0) {
        uint64_t one = 1;
        if (write(v->irqfd, &one, 8) == 8)
            return;
    }
    s->irq_mask |= 1u << i;             /* no irqfd (tests): Python raises it */
    v->interrupts--;                    /* ... and counts it */
}

static int mac_port(struct nic *n, const uint8_t *mac)
{
    for (int i = 0; i < n->nvfs; i++) {
        uint64_t m = MAC_BASE + (uint64_t)i;
        int same = 1;
        for (int b = 0; b < 6; b++)
            same &= mac[b] == (uint8_t)(m >> (8 * (5 - b)));
        if (same)
            return i;
    }
    return -1;
}

/* Switch.route() for a frame of at least MIN_FRAME bytes (src checked already):
 * a port mask, 0 = drop. */
static uint32_t route(struct nic *n, const uint8_t *f, int src)
{
    if (f[0] & 1) {
        uint32_t out = 0;
        __atomic_fetch_add(&n->flooded, 1, __ATOMIC_RELAXED);
        for (int p = 0; p < n->nvfs; p++)
            if (p != src)
                out |= 1u << p;
        if (n->has_uplink && src != UPLINK)
            out |= 1u << UPLINK;
        return out;
    }
    int port = mac_port(n, f);
    if (port >= 0 && port != src) {
        __atomic_fetch_add(&n->forwarded, 1, __ATOMIC_RELAXED);
        return 1u << port;
    }
    if (port < 0 && src != UPLINK && n->has_uplink) {
        __atomic_fetch_add(&n->to_uplink, 1, __ATOMIC_RELAXED);
        return 1u << UPLINK;
    }
    __atomic_fetch_add(&n->no_route, 1, __ATOMIC_RELAXED);
    return 0;
}

static void leave(struct nic_stage *s, int port, int k)
{
    s->left_port[s->nleft] = port;
    s->left_frame[s->nleft++] = k;
}

/* Nic._deliver() for the staged frames bound for VF port j, under j's lock.  At the
 * first thing it cannot do natively it stops and leaves that frame and the rest to
 * Python (in order: Python delivers them after this). */
static void deliver_vf(struct nic *n, int j, struct nic_stage *s)
{
    struct nic_vf *v = &n->vf[j];
    int k = 0, got = 0, dropped = 0;
    pthread_mutex_lock(&v->mu);
    int64_t spa = live(n, v);
    if (spa < 0)
        goto rest;
    for (; k < s->nframes; k++) {
        if (!(s->ports[k] & (1u << j)))
            continue;
        uint32_t len = s->len[k];
        uint32_t avail = ld32(n, spa + %(NS_RX_TAIL)d) - v->rx_head;
        if (avail > v->qsize)
            break;                      /* the driver claims too much: Python's error */
        if (avail == 0) {               /* no buffer posted: a NIC drops */
            v->rx_no_buffer++;
            dropped++;
            continue;
        }
        int64_t dpa = entry(n, v, v->rx_va, v->rx_head);
        if (dpa < 0)
            break;
        uint64_t buf = __atomic_load_n((uint64_t *)(n->mem + dpa), __ATOMIC_RELAXED);
        uint16_t buflen = __atomic_load_n((uint16_t *)(n->mem + dpa + %(NDESC_BUFLEN)d),
                                          __ATOMIC_RELAXED);
        if (len > buflen) {
            v->rx_too_big++;
            dropped++;
            continue;
        }
        if (dma(n, v->root, buf, len, 1, s->data[k]))
            break;                      /* not the owner's to write: Python's fault */
        st16(n, dpa + %(NDESC_LEN)d, (uint16_t)len);
        st16(n, dpa + %(NDESC_STATUS)d, %(NST_DONE)d);
        v->rx_head++;
        got++;
        v->rx_bytes += len;
        v->native_rx++;
    }
    st32(n, spa + %(NS_RX_HEAD)d, v->rx_head);  /* publishes the descriptors */
    v->rx_packets += got;
    if (got)
        bump64(n, spa + %(NS_RX_PACKETS)d, got);
    if (dropped)
        bump64(n, spa + %(NS_RX_DROPS)d, dropped);
    if (got)
        interrupt(n, j, spa, s);
rest:
    pthread_mutex_unlock(&v->mu);
    for (; k < s->nframes; k++)
        if (s->ports[k] & (1u << j))
            leave(s, j, k);
}

static void deliver_uplink(struct nic *n, struct nic_stage *s)
{
    for (int k = 0; k < s->nframes; k++) {
        if (!(s->ports[k] & (1u << UPLINK)))
            continue;
        if (n->tap_fd < 0) {            /* a UDP tunnel: Python sends */
            leave(s, -1, k);
            continue;
        }
        if (write(n->tap_fd, s->data[k], s->len[k]) == (ssize_t)s->len[k])
            __atomic_fetch_add(&n->up_tx, 1, __ATOMIC_RELAXED);
        else
            __atomic_fetch_add(&n->up_tx_errors, 1, __ATOMIC_RELAXED);
    }
}

static void deliver_all(struct nic *n, struct nic_stage *s)
{
    for (int j = 0; j < n->nvfs; j++)
        deliver_vf(n, j, s);
    deliver_uplink(n, s);
}

/* For the tests: the C walk, to compare with devices/iommu.py's on the same tables. */
int64_t nic_check_page(struct nic *n, uint64_t root, uint64_t va, int write)
{
    return check_page(n, root, va, write);
}

int nic_init(struct nic *n)
{
    for (int i = 0; i < NIC_MAX_VFS; i++)
        if (pthread_mutex_init(&n->vf[i].mu, NULL))
            return -1;
    return 0;
}

void nic_lock(struct nic *n, int vf) { pthread_mutex_lock(&n->vf[vf].mu); }
void nic_unlock(struct nic *n, int vf) { pthread_mutex_unlock(&n->vf[vf].mu); }
uint8_t *nic_frame(struct nic_stage *s, int k) { return s->data[k]; }

/* Read and zero a shared counter in one step (the C threads add to it concurrently). */
uint64_t nic_take(uint64_t *counter) { return __atomic_exchange_n(counter, 0, __ATOMIC_RELAXED); }

/* Nic._tx_batch(): drain VF i's TX ring, then deliver.  Returns NIC_DID | NIC_FALLBACK
 * bits; on NIC_FALLBACK tx_head stops at the descriptor Python must look at. */
int nic_tx(struct nic *n, int i, struct nic_stage *s)
{
    struct nic_vf *v = &n->vf[i];
    int ret = 0, sent = 0;
    s->nframes = s->nleft = 0;
    s->irq_mask = 0;
    pthread_mutex_lock(&v->mu);
    int64_t spa = live(n, v);
    if (spa < 0) {
        pthread_mutex_unlock(&v->mu);
        return v->ready ? NIC_FALLBACK : 0;     /* unbound: nothing to do, as Python */
    }
    uint32_t tail = ld32(n, spa + %(NS_TX_TAIL)d);
    uint32_t todo = tail - v->tx_head;
    if (todo == 0) {
        pthread_mutex_unlock(&v->mu);
        return 0;
    }
    if (todo > v->qsize) {
        pthread_mutex_unlock(&v->mu);
        return NIC_FALLBACK;
    }
    while (v->tx_head != tail) {
        int64_t dpa = entry(n, v, v->tx_va, v->tx_head);
        if (dpa < 0) { ret |= NIC_FALLBACK; break; }
        uint64_t buf = __atomic_load_n((uint64_t *)(n->mem + dpa), __ATOMIC_RELAXED);
        uint16_t len = __atomic_load_n((uint16_t *)(n->mem + dpa + %(NDESC_LEN)d),
                                       __ATOMIC_RELAXED);
        int k = s->nframes;
        uint8_t *f = s->data[k];
        if (len < MIN_FRAME || len > MTU || dma(n, v->root, buf, len, 0, f) ||
            mac_port(n, f + 6) != i) {
            ret |= NIC_FALLBACK;        /* too long, a fault, spoofed: Python's */
            break;
        }
        s->len[k] = len;
        s->ports[k] = route(n, f, i);
        s->nframes++;
        v->tx_packets++;
        v->tx_bytes += len;
        v->native_tx++;
        sent++;
        st16(n, dpa + %(NDESC_STATUS)d, %(NST_DONE)d);
        v->tx_head++;
    }
    if (sent) {
        st32(n, spa + %(NS_TX_HEAD)d, v->tx_head);
        bump64(n, spa + %(NS_TX_PACKETS)d, sent);
        ret |= NIC_DID;
    }
    if (!(ret & NIC_FALLBACK))
        v->batches++;                   /* else Python's batch counts it */
    pthread_mutex_unlock(&v->mu);
    deliver_all(n, s);                  /* outside our lock: no lock-order cycles */
    return ret;
}

/* ------------------------------------------------------------- the doorbell
 * vf.py's idle() and sleep_or_recheck(), for the TX worker. */
static int tx_pending(struct nic *n, struct nic_vf *v, uint64_t spa)
{ return ld32(n, spa + %(NS_TX_TAIL)d) != v->tx_head; }

/* vf.py's _set_waiting(): VFS_WAITING, only into the status page of a live binding. */
static int set_waiting(struct nic *n, struct nic_vf *v, uint64_t spa, uint32_t value)
{
    int ok;
    pthread_mutex_lock(&v->mu);
    ok = live(n, v) == (int64_t)spa;
    if (ok)
        st32(n, spa + %(VFS_WAITING)d, value);
    pthread_mutex_unlock(&v->mu);
    return ok;
}

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

/* Nothing to do: poll spin_ns (a busy driver then never rings), announce a sleep in
 * VFS_WAITING, fence (our store before the tail load, against the driver's
 * store-then-load), look once more, sleep on the doorbell.  -1: Python idles. */
static int idle(struct nic *n, int i, int efd, uint64_t spin_ns, int wait_ms)
{
    struct nic_vf *v = &n->vf[i];
    pthread_mutex_lock(&v->mu);
    int64_t s = live(n, v);
    pthread_mutex_unlock(&v->mu);
    if (s < 0 || efd < 0)
        return -1;
    uint64_t spa = (uint64_t)s, end = now_ns() + spin_ns;
    while (now_ns() < end)
        if (tx_pending(n, v, spa))
            return 0;
    v->sleeps = v->sleeps %% 0xFFFFFFFFu + 1;       /* never 0: 0 means awake */
    if (tx_pending(n, v, spa) || !set_waiting(n, v, spa, v->sleeps))
        return 0;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (tx_pending(n, v, spa)) {
        set_waiting(n, v, spa, 0);
        return 0;
    }
    struct pollfd p = {.fd = efd, .events = POLLIN};
    if (poll(&p, 1, wait_ms) > 0) {
        uint64_t cnt;
        if (read(efd, &cnt, 8) == 8) {
            pthread_mutex_lock(&v->mu);
            v->doorbells += cnt;
            pthread_mutex_unlock(&v->mu);
        }
    }
    set_waiting(n, v, spa, 0);
    return 0;
}

/* Nic._tx_loop(): batches and sleeps, all here, until something needs Python: a
 * fallback, frames or interrupts left to it, no live binding (NIC_IDLE), or stop. */
int nic_worker(struct nic *n, int i, struct nic_stage *s, int efd, uint64_t spin_ns,
               int wait_ms)
{
    while (!__atomic_load_n(&n->stop, __ATOMIC_ACQUIRE)) {
        int r = nic_tx(n, i, s);
        if ((r & NIC_FALLBACK) || s->nleft || s->irq_mask)
            return r;
        if (r & NIC_DID)
            continue;
        if (idle(n, i, efd, spin_ns, wait_ms) < 0)
            return NIC_IDLE;
    }
    return 0;
}

/* Nic._uplink_loop() + from_uplink() for a TAP: wait up to timeout_ms, read what is
 * there (64 frames at most), switch and deliver. */
int nic_uplink_rx(struct nic *n, struct nic_stage *s, int timeout_ms)
{
    struct pollfd p = {.fd = n->tap_fd, .events = POLLIN};
    s->nframes = s->nleft = 0;
    s->irq_mask = 0;
    int r = poll(&p, 1, timeout_ms);
    if (r < 0)
        return errno == EINTR ? 0 : -1;
    if (r == 0)
        return 0;
    while (s->nframes < 64) {
        int k = s->nframes;
        uint8_t big[65536];             /* whole datagram: the oversized are counted */
        ssize_t got = read(n->tap_fd, big, sizeof big);
        if (got < 0)
            break;
        __atomic_fetch_add(&n->up_rx, 1, __ATOMIC_RELAXED);
        if (got < MIN_FRAME) {
            __atomic_fetch_add(&n->up_runts, 1, __ATOMIC_RELAXED);
            continue;
        }
        if (got > MTU) {
            __atomic_fetch_add(&n->up_too_big, 1, __ATOMIC_RELAXED);
            continue;
        }
        memcpy(s->data[k], big, (size_t)got);
        s->len[k] = (uint16_t)got;
        s->ports[k] = route(n, s->data[k], UPLINK);
        s->nframes++;
    }
    deliver_all(n, s);
    return s->nframes ? NIC_DID : 0;
}
"""

_C = {k: getattr(abi, k) for k in (
    "NIC_MAX_VFS", "PTE_P", "PTE_W", "PTE_U", "PTE_PS", "PTE_ADDR", "USER_LIMIT",
    "FRAMES_PHYS", "FT_TYPE_SHIFT", "FT_DATA", "FT_ROOT", "NIC_MTU_FRAME", "NIC_MIN_FRAME",
    "NDESC_SIZE", "NIC_MAC_BASE", "NS_IRQ", "NS_RX_TAIL", "NS_TX_TAIL", "NS_RX_HEAD",
    "NS_TX_HEAD", "NS_RX_PACKETS", "NS_RX_DROPS", "NS_TX_PACKETS", "NDESC_LEN",
    "NDESC_BUFLEN", "NDESC_STATUS", "NST_DONE", "VFS_WAITING")}
_C["MAX_STAGE"] = MAX_STAGE
assert abi.NST_OK == 0

ffibuilder = FFI()
ffibuilder.cdef(CDEF % _C)
ffibuilder.set_source("devices._nic_cffi", SOURCE % _C,
                      extra_compile_args=["-O2", "-std=gnu11", "-Wall"], libraries=["pthread"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
