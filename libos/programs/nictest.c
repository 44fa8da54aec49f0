/* nictest: the NIC's test program (devices/nic.py, libos/lib/nic.c).
 *
 *   nictest info [-vf N]              the VF's MAC and the network configuration
 *   nictest echo COUNT [-vf N] [-irq] answer ARP for our address and send every
 *                                     frame of type 0x88B5 back to its sender, until
 *                                     COUNT were echoed or a frame says "STOP" 
 *   nictest pair N [-irq] [-len L]    N frames VF 0 -> VF 1 through the switch, in
 *                                     order, no loss; a broadcast back; frames/s and
 *                                     doorbells (exits) per frame
 *   nictest two N                     two processes: we keep VF 0, a child gets VF 1
 *                                     and echoes N frames we send it (at our ticks)
 *   nictest hostile                   a hostile driver on VF 0 and VF 1: spoofed MACs,
 *                                     bad lengths, DMA outside its memory, tails
 *                                     beyond the rings, rings freed mid-flight
 *
 * The shell lends every NIC VF it holds to the program it runs.
 */
#include "xomb.h"
#include "nic.h"

#define ETH_TEST 0x88B5                 /* IEEE local experimental ethertype */
#define NOWHERE 0x50000000UL            /* never mapped in a program */

static uint8_t frame[NIC_BUF], rxb[NIC_BUF];
static int passed, failed;

static void check(const char *what, int ok, const char *detail)
{
    printf("%s %-50s %s\n", ok ? "PASS" : "FAIL", what, detail);
    if (ok)
        passed++;
    else
        failed++;
}

static void put_mac(uint8_t *p, const uint8_t *mac) { memcpy(p, mac, 6); }
static unsigned be16(const uint8_t *p) { return (unsigned)p[0] << 8 | p[1]; }
static void put16(uint8_t *p, unsigned v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, v >> 16); put16(p + 2, v & 0xFFFF); }
static uint32_t be32(const uint8_t *p) { return (uint32_t)be16(p) << 16 | be16(p + 2); }

static unsigned build(const uint8_t *dst, const uint8_t *src, uint32_t seq, unsigned len)
{
    put_mac(frame, dst);
    put_mac(frame + 6, src);
    put16(frame + 12, ETH_TEST);
    put32(frame + 14, seq);
    for (unsigned i = 18; i < len; i++)
        frame[i] = (uint8_t)(seq + i);
    return len;
}

static int frame_ok(const uint8_t *f, int len, uint32_t seq, unsigned want_len)
{
    if ((unsigned)len != want_len || be16(f + 12) != ETH_TEST || be32(f + 14) != seq)
        return 0;
    for (int i = 18; i < len; i++)
        if (f[i] != (uint8_t)(seq + i))
            return 0;
    return 1;
}

static void ip_str(char *b, uint32_t ip)
{
    snprintf(b, 16, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
}

static void mac_str(char *b, const uint8_t *m)
{
    snprintf(b, 18, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

static int open_vf(struct nic *n, unsigned vf)
{
    long r = nic_open(n, vf);
    if (r < 0)
        printf("nictest: cannot open NIC VF %u: %s (%u VFs held; boot with the NIC)\n", vf,
               xomb_errname(r), nic_vf_count());
    return r < 0 ? -1 : 0;
}

static int info(unsigned vf)
{
    struct nic n;
    struct net_config c;
    if (open_vf(&n, vf) < 0 || net_config(&n, &c) < 0)
        return 1;
    char ip[16], gw[16], mac[18];
    ip_str(ip, c.ip);
    ip_str(gw, c.gateway);
    mac_str(mac, c.mac);
    printf("nictest: vf %u mac %s ip %s/%u gateway %s, %u VFs held\n", vf, mac, ip,
           c.prefix, gw, nic_vf_count());
    nic_close(&n);
    return 0;
}

/* ARP request for our address -> reply (so the host can resolve us). */
static int arp_reply(struct nic *n, const struct net_config *c, const uint8_t *f, int len)
{
    if (len < 42 || be16(f + 12) != 0x0806 || be16(f + 20) != 1 || be32(f + 38) != c->ip)
        return 0;
    uint8_t r[42];
    put_mac(r, f + 6);
    put_mac(r + 6, n->mac);
    put16(r + 12, 0x0806);
    memcpy(r + 14, f + 14, 6);          /* htype, ptype, hlen, plen */
    put16(r + 20, 2);
    put_mac(r + 22, n->mac);
    put32(r + 28, c->ip);
    memcpy(r + 32, f + 22, 10);         /* the requester's MAC and IP */
    nic_send(n, r, sizeof(r));
    return 1;
}

static int echo(unsigned vf, unsigned count, int irq)
{
    struct nic n;
    struct net_config c;
    if (open_vf(&n, vf) < 0 || net_config(&n, &c) < 0)
        return 1;
    nic_use_interrupts(&n, irq);
    char mac[18];
    mac_str(mac, n.mac);
    printf("nictest: echo ready on vf %u (%s)%s\n", vf, mac, irq ? ", by interrupt" : "");
    unsigned echoed = 0, arps = 0, stop = 0;
    uint64_t idle_since = time_us();
    while (echoed < count) {
        int len = nic_recv(&n, rxb, sizeof(rxb));
        if (len == 0) {
            if (time_us() - idle_since > 60000000) {
                printf("nictest: no frame for 60 s, giving up\n");
                break;
            }
            nic_wait(&n, 100000);
            continue;
        }
        idle_since = time_us();
        if (arp_reply(&n, &c, rxb, len)) {
            arps++;
            continue;
        }
        if (len < 18 || be16(rxb + 12) != ETH_TEST)
            continue;
        if (!memcmp(rxb + 14, "STOP", 4)) {     /* the host is done (it may have resent) */
            stop = 1;
            break;
        }
        memcpy(rxb, rxb + 6, 6);        /* back to the sender, from us */
        put_mac(rxb + 6, n.mac);
        while (nic_send(&n, rxb, (unsigned)len) == -2)
            cpu_relax();                /* TX ring full: the device drains it */
        echoed++;
    }
    printf("nictest: echoed %u frames, %u ARP replies; device: rx %lu, rx drops %lu, "
           "errors %lu, faults %lu; %lu doorbells\n", echoed, arps,
           NS64(&n, XOMB_NS_RX_PACKETS), NS64(&n, XOMB_NS_RX_DROPS), NS64(&n, XOMB_NS_ERRORS),
           NS64(&n, XOMB_NS_FAULTS), n.doorbells);
    nic_close(&n);
    return echoed == count || stop ? 0 : 1;
}

static int pair(unsigned count, int irq, unsigned len)
{
    static struct nic a, b, c3;
    if (open_vf(&a, 0) < 0 || open_vf(&b, 1) < 0)
        return 1;
    int third = nic_holds(2) && nic_open(&c3, 2) == 0;
    nic_use_interrupts(&b, irq);
    unsigned sent = 0, got = 0, bad = 0;
    uint64_t t0 = time_us(), last = t0;
    while (got < count && time_us() - last < 10000000) {
        /* at most qsize in flight: the receiver always has a buffer (no drops) */
        while (sent < count && sent - got < b.qsize &&
               nic_send(&a, frame, build(b.mac, a.mac, sent, len)) == 0)
            sent++;
        int k = nic_recv(&b, rxb, sizeof(rxb));
        if (k > 0) {
            bad += !frame_ok(rxb, k, got, len);
            got++;
            last = time_us();
        } else if (sent - got >= b.qsize || sent == count) {
            nic_wait(&b, 1000);
        }
    }
    uint64_t us = time_us() - t0;
    if (!us)
        us = 1;
    char det[120];
    snprintf(det, sizeof(det), "%u/%u, %u out of order or damaged", got, count, bad);
    check("unicast VF 0 -> VF 1, in order, no loss", got == count && !bad, det);
    printf("nictest: pair: %u frames in %lu us: %lu frames/s, %lu doorbells (%lu.%03lu per "
           "frame)\n", got, us, (uint64_t)got * 1000000 / us, a.doorbells,
           a.doorbells / (got ? got : 1), a.doorbells * 1000 / (got ? got : 1) % 1000);
    printf("@nic pair frames %u len %u us %lu doorbells %lu\n", got, len, us, a.doorbells);
    /* broadcast from VF 1 reaches VF 0 (and VF 2), not VF 1 itself */
    static const uint8_t bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    nic_send(&b, frame, build(bcast, b.mac, 777, 64));
    int ka = 0, kc = 0, kb = 0;
    uint64_t t1 = time_us();
    while (time_us() - t1 < 2000000 && (!ka || (third && !kc))) {
        if (!ka)
            ka = nic_recv(&a, rxb, sizeof(rxb));
        if (ka && !frame_ok(rxb, ka, 777, 64))
            ka = -1;
        if (third && !kc)
            kc = nic_recv(&c3, rxb, sizeof(rxb));
    }
    kb = nic_recv(&b, rxb, sizeof(rxb));
    check("broadcast VF 1 -> VF 0, not back to VF 1", ka > 0 && kb == 0, "");
    if (third) {
        snprintf(det, sizeof(det), "VF 2 received %lu frames", NS64(&c3, XOMB_NS_RX_PACKETS));
        check("VF 2 got the broadcast, none of the unicast", kc == 64 &&
              NS64(&c3, XOMB_NS_RX_PACKETS) == 1, det);
        nic_close(&c3);
    }
    nic_close(&a);
    nic_close(&b);
    printf("nictest: pair: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

/* --- two processes, a VF each ------------------------------------------------ *
 * We keep VF 0 and give VF 1 to a child running `nictest echo`.  While we wait
 * for it, every tick that preempts it runs tick_send() here (the libOS's
 * process_interrupt_check hook): one frame out on VF 0, echoes taken back. */

static struct nic tw;
static uint8_t peer[6];
static unsigned tw_n, tw_got, tw_bad, tw_ticks;

static void tw_drain(void)
{
    int k;
    while ((k = nic_recv(&tw, rxb, sizeof(rxb))) > 0) {
        if (k >= 18 && be32(rxb + 14) < tw_got)
            continue;                   /* the echo of a frame we sent again */
        if (memcmp(rxb + 6, peer, 6) || !frame_ok(rxb, k, tw_got, 80))
            tw_bad++;
        tw_got++;
        tw_ticks = 0;
    }
}

/* Frame tw_got until its echo is back (sent again every few ticks: the first
 * ones may arrive before the child has opened its VF, and are dropped), then
 * STOP. */
static int tick_send(void)
{
    tw_drain();
    if (tw_ticks++ % 4 == 0) {
        if (tw_got < tw_n)
            nic_send(&tw, frame, build(peer, tw.mac, tw_got, 80));
        else
            nic_send(&tw, frame, build(peer, tw.mac, 0x53544f50, 80));   /* "STOP" */
    }
    return 0;                           /* never kill the child */
}

static int two(unsigned n)
{
    char det[100];
    if (open_vf(&tw, 0) < 0)
        return 1;
    memcpy(peer, tw.mac, 6);
    peer[5] += 1;                       /* VF 1's MAC */
    /* a child we give no VF cannot use ours */
    char *iargv[] = { "nictest", "info", "-vf", "0", 0 };
    long h = spawn("nictest", iargv);
    int st = h < 0 ? -1 : wait_status(h, 0, 1);
    check("a child without a VF cannot open ours", st == 1, "");
    /* a child with VF 1 echoes what we send from VF 0 */
    char num[12];
    snprintf(num, sizeof(num), "%u", 1000000);  /* it stops when we say STOP */
    char *eargv[] = { "nictest", "echo", num, "-vf", "1", 0 };
    h = spawn("nictest", eargv);
    long g = h < 0 ? h : nic_grant(h, 1);
    if (g < 0) {
        printf("nictest: two: cannot start the child: %s\n", h < 0 ? spawn_error() :
               xomb_errname(g));
        return 1;
    }
    tw_n = n;
    process_interrupt_check = tick_send;
    st = wait_status(h, 0, 0);
    process_interrupt_check = 0;
    nic_take_back(h);
    proc_destroy(h);
    snprintf(det, sizeof(det), "child status %d, %u/%u echoes, %u bad", st, tw_got, n, tw_bad);
    check("VF 0 (us) <-> VF 1 (a child) through the switch", st == 0 && tw_got == n &&
          !tw_bad, det);
    check("VF 1 came back to us", nic_holds(1), "");
    nic_close(&tw);
    printf("nictest: two: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

/* --- the hostile driver ---------------------------------------------------- */

static struct nic ha, hb;

/* Post one raw TX descriptor on a (no checks) and wait until the device took it:
 * its status, or -1 if it did not within 2 s. */
static int tx_raw(struct nic *n, uint64_t buf, unsigned len)
{
    uint32_t slot = n->tx_tail % n->qsize;
    n->tx[slot].buf = buf;
    n->tx[slot].len = (uint16_t)len;
    n->tx[slot].status = 0;
    compiler_barrier();
    NS32(n, XOMB_NS_TX_TAIL) = ++n->tx_tail;
    __asm__ volatile("mfence" ::: "memory");
    if (NS32(n, XOMB_NS_WAITING))
        *(volatile uint32_t *)(n->regs + XOMB_NIC_DOORBELL) = 1;
    uint64_t t0 = time_us();
    while (NS32(n, XOMB_NS_TX_HEAD) != n->tx_tail && time_us() - t0 < 2000000)
        cpu_relax();
    return NS32(n, XOMB_NS_TX_HEAD) == n->tx_tail ? n->tx[slot].status & ~XOMB_NST_DONE : -1;
}

/* Wait (bounded) until *p changes from old. */
static uint64_t wait_change(volatile uint64_t *p, uint64_t old)
{
    uint64_t t0 = time_us();
    while (*p == old && time_us() - t0 < 2000000)
        cpu_relax();
    return *p;
}

static const struct disk_fault *last_fault(struct nic *n)
{
    uint64_t k = NS64(n, XOMB_NS_FAULTS);
    return (const struct disk_fault *)n->faults + (k - 1) % n->fault_n;
}

static void tx_fault(const char *what, uint64_t buf, unsigned len, unsigned reason)
{
    uint64_t f0 = NS64(&ha, XOMB_NS_FAULTS), rx0 = NS64(&hb, XOMB_NS_RX_PACKETS);
    int st = tx_raw(&ha, buf, len);
    const struct disk_fault *f = last_fault(&ha);
    char det[100];
    snprintf(det, sizeof(det), "status %d, faults +%lu, reason %u at 0x%lx", st,
             NS64(&ha, XOMB_NS_FAULTS) - f0, f->reason, f->address);
    uint64_t at = buf == XOMB_STACK_TOP - 32 ? XOMB_STACK_TOP : buf;   /* the first bad byte */
    check(what, st == XOMB_NST_IOMMU_FAULT && NS64(&ha, XOMB_NS_FAULTS) == f0 + 1 &&
          f->reason == reason && f->address == at && f->access == XOMB_IOMMU_R && f->endpoint == 0 &&
          NS64(&hb, XOMB_NS_RX_PACKETS) == rx0, det);
}

/* One good frame a -> b arrives intact (the VFs still work). */
static int round_trip(uint32_t seq)
{
    nic_send(&ha, frame, build(hb.mac, ha.mac, seq, 100));
    uint64_t t0 = time_us();
    int k = 0;
    while (!(k = nic_recv(&hb, rxb, sizeof(rxb))) && time_us() - t0 < 2000000)
        cpu_relax();
    return k > 0 && frame_ok(rxb, k, seq, 100);
}

/* b's next RX descriptor gets (buf, buflen); a sends it one frame; returns b's
 * descriptor status (or -1), and restores the descriptor through nic_recv. */
static int rx_attack(uint64_t buf, unsigned buflen, uint64_t *faults, uint64_t *drops)
{
    volatile struct nic_desc *d = &hb.rx[hb.rx_next % hb.qsize];
    uint64_t f0 = NS64(&hb, XOMB_NS_FAULTS), d0 = NS64(&hb, XOMB_NS_RX_DROPS);
    uint32_t h0 = NS32(&hb, XOMB_NS_RX_HEAD);
    d->buf = buf;
    d->buflen = (uint16_t)buflen;
    compiler_barrier();
    nic_send(&ha, frame, build(hb.mac, ha.mac, 5, 200));
    wait_change(&NS64(&hb, XOMB_NS_RX_DROPS), d0);
    int st = NS32(&hb, XOMB_NS_RX_HEAD) != h0 ? d->status & ~XOMB_NST_DONE : -1;
    *faults = NS64(&hb, XOMB_NS_FAULTS) - f0;
    *drops = NS64(&hb, XOMB_NS_RX_DROPS) - d0;
    d->buf = (uint64_t)(hb.rxbuf + (hb.rx_next % hb.qsize) * NIC_BUF);
    d->buflen = NIC_BUF;
    nic_recv(&hb, rxb, sizeof(rxb));    /* takes the failed descriptor, reposts it */
    return st;
}

static int hostile(void)
{
    if (open_vf(&ha, 0) < 0 || open_vf(&hb, 1) < 0)
        return 1;
    char det[120];
    uint64_t faults = 0;
    check("a good frame VF 0 -> VF 1", round_trip(1), "");

    /* 1. spoofing: VF 0 sends as VF 1 */
    uint64_t sp0 = NS64(&ha, XOMB_NS_SPOOFED), rx0 = NS64(&hb, XOMB_NS_RX_PACKETS);
    build(hb.mac, hb.mac, 2, 64);
    int st = nic_send(&ha, frame, 64);
    uint64_t sp = wait_change(&NS64(&ha, XOMB_NS_SPOOFED), sp0);
    snprintf(det, sizeof(det), "send %d, spoofed %lu, VF 1 rx +%lu", st, sp - sp0,
             NS64(&hb, XOMB_NS_RX_PACKETS) - rx0);
    check("spoofed source MAC: dropped and counted", st == 0 && sp == sp0 + 1 &&
          NS64(&hb, XOMB_NS_RX_PACKETS) == rx0 && round_trip(3), det);

    /* 2. lengths */
    uint64_t e0 = NS64(&ha, XOMB_NS_ERRORS);
    build(hb.mac, ha.mac, 4, 64);
    int s1 = tx_raw(&ha, (uint64_t)frame, 1515), s2 = tx_raw(&ha, (uint64_t)frame, 9000),
        s3 = tx_raw(&ha, (uint64_t)frame, 10);
    snprintf(det, sizeof(det), "status %d %d %d, errors +%lu", s1, s2, s3,
             NS64(&ha, XOMB_NS_ERRORS) - e0);
    check("TX length 1515, 9000, 10: refused", s1 == XOMB_NST_TOO_LONG &&
          s2 == XOMB_NST_TOO_LONG && s3 == XOMB_NST_TOO_LONG &&
          NS64(&ha, XOMB_NS_ERRORS) == e0 + 3, det);
    check("a length > buffer in the driver API: refused", nic_send(&ha, frame, 1515) < 0, "");

    /* 3. TX DMA outside our memory */
    tx_fault("TX buffer not mapped: IOMMU fault", NOWHERE, 64, XOMB_IOMMU_NOT_MAPPED);
    tx_fault("TX buffer in the kernel: IOMMU fault", 0xFFFF800000001000UL, 64,
             XOMB_IOMMU_KERNEL);
    tx_fault("TX buffer = the VF register page: IOMMU fault", (uint64_t)ha.regs, 64,
             XOMB_IOMMU_NOT_RAM);
    tx_fault("TX buffer running off the top of our stack", XOMB_STACK_TOP - 32, 64,
             XOMB_IOMMU_NOT_MAPPED);

    /* 4. a TX tail beyond the ring */
    e0 = NS64(&ha, XOMB_NS_ERRORS);
    ha.tx_tail += ha.qsize + 5;
    NS32(&ha, XOMB_NS_TX_TAIL) = ha.tx_tail;
    __asm__ volatile("mfence" ::: "memory");
    *(volatile uint32_t *)(ha.regs + XOMB_NIC_DOORBELL) = 1;
    wait_change(&NS64(&ha, XOMB_NS_ERRORS), e0);
    for (uint64_t t0 = time_us(); NS32(&ha, XOMB_NS_TX_HEAD) != ha.tx_tail &&
         time_us() - t0 < 2000000;)
        cpu_relax();
    snprintf(det, sizeof(det), "errors +%lu, head %u tail %u", NS64(&ha, XOMB_NS_ERRORS) - e0,
             NS32(&ha, XOMB_NS_TX_HEAD), ha.tx_tail);
    check("TX tail beyond the ring: refused as a whole", NS64(&ha, XOMB_NS_ERRORS) == e0 + 1 &&
          NS32(&ha, XOMB_NS_TX_HEAD) == ha.tx_tail && round_trip(6), det);

    /* 5. RX into memory we may not write, or do not have, or too small */
    uint64_t text = XOMB_PROGRAM_VA, before = *(volatile uint64_t *)text, drops;
    st = rx_attack(text, NIC_BUF, &faults, &drops);
    const struct disk_fault *f = last_fault(&hb);
    snprintf(det, sizeof(det), "status %d, faults +%lu, reason %u", st, faults, f->reason);
    check("RX into our read-only text: IOMMU fault", st == XOMB_NST_IOMMU_FAULT &&
          faults == 1 && f->reason == XOMB_IOMMU_READ_ONLY && f->access == XOMB_IOMMU_W &&
          *(volatile uint64_t *)text == before, det);
    st = rx_attack(NOWHERE, NIC_BUF, &faults, &drops);
    snprintf(det, sizeof(det), "status %d, faults +%lu", st, faults);
    check("RX buffer not mapped: IOMMU fault", st == XOMB_NST_IOMMU_FAULT && faults == 1, det);
    st = rx_attack((uint64_t)(hb.rxbuf + (hb.rx_next % hb.qsize) * NIC_BUF), 20, &faults,
                   &drops);
    snprintf(det, sizeof(det), "status %d, drops +%lu", st, drops);
    check("RX frame larger than the buffer: dropped", st == -1 && drops == 1 && !faults, det);
    check("VF 1 still receives", round_trip(7), "");

    /* 6. an RX tail beyond the ring */
    e0 = NS64(&hb, XOMB_NS_ERRORS);
    uint64_t d0 = NS64(&hb, XOMB_NS_RX_DROPS);
    NS32(&hb, XOMB_NS_RX_TAIL) = hb.rx_tail + hb.qsize + 3;
    nic_send(&ha, frame, build(hb.mac, ha.mac, 8, 64));
    wait_change(&NS64(&hb, XOMB_NS_RX_DROPS), d0);
    snprintf(det, sizeof(det), "errors +%lu, drops +%lu", NS64(&hb, XOMB_NS_ERRORS) - e0,
             NS64(&hb, XOMB_NS_RX_DROPS) - d0);
    check("RX tail beyond the ring: frame dropped, counted",
          NS64(&hb, XOMB_NS_ERRORS) == e0 + 1 && NS64(&hb, XOMB_NS_RX_DROPS) == d0 + 1, det);
    NS32(&hb, XOMB_NS_RX_TAIL) = hb.rx_tail;
    check("VF 1 receives again", round_trip(9), "");

    /* 7. rings freed mid-flight */
    uint64_t f0 = NS64(&hb, XOMB_NS_FAULTS);
    page_free((uint64_t)hb.rx);
    nic_send(&ha, frame, build(hb.mac, ha.mac, 10, 64));
    uint64_t fb = wait_change(&NS64(&hb, XOMB_NS_FAULTS), f0);
    check("RX ring freed: IOMMU fault, VF 1 unbound", fb == f0 + 1 &&
          last_fault(&hb)->reason == XOMB_IOMMU_NOT_MAPPED, "");
    f0 = NS64(&ha, XOMB_NS_FAULTS);
    page_free((uint64_t)ha.tx);
    NS32(&ha, XOMB_NS_TX_TAIL) = ++ha.tx_tail;
    __asm__ volatile("mfence" ::: "memory");
    *(volatile uint32_t *)(ha.regs + XOMB_NIC_DOORBELL) = 1;
    uint64_t fa = wait_change(&NS64(&ha, XOMB_NS_FAULTS), f0);
    check("TX ring freed: IOMMU fault, VF 0 unbound", fa == f0 + 1, "");
    faults = NS64(&ha, XOMB_NS_FAULTS) + NS64(&hb, XOMB_NS_FAULTS);
    check("both VFs open again and work", nic_open(&ha, 0) == 0 && nic_open(&hb, 1) == 0 &&
          round_trip(11) && round_trip(12), "");
    nic_close(&ha);
    nic_close(&hb);
    printf("nictest: hostile: %d passed, %d failed, %lu IOMMU faults delivered\n", passed,
           failed, faults);
    return failed ? 1 : 0;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "info";
    unsigned vf = 0, count = 0, len = 60;
    int irq = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "-vf") && i + 1 < argc)
            vf = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "-len") && i + 1 < argc)
            len = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "-irq"))
            irq = 1;
        else
            count = (unsigned)atoi(argv[i]);
    }
    if (!strcmp(mode, "info"))
        return info(vf);
    if (!strcmp(mode, "echo"))
        return echo(vf, count ? count : 1, irq);
    if (!strcmp(mode, "pair"))
        return pair(count ? count : 1000, irq, len < 18 ? 18 : len > NIC_MTU_FRAME ? NIC_MTU_FRAME : len);
    if (!strcmp(mode, "hostile"))
        return hostile();
    if (!strcmp(mode, "two"))
        return two(count ? count : 10);
    puts("usage: nictest info|echo COUNT|pair N|two N|hostile [-vf N] [-irq] [-len L]");
    return 2;
}
