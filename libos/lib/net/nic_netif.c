/* The glue between the NIC driver and the stack: four small functions. */
#include "nic_netif.h"
#include "console.h"
#include "libos.h"
#include "string.h"
#include "syscall.h"

static int x_send(void *ctx, const void *frame, unsigned len)
{
    return nic_send(ctx, frame, len);
}

static int x_recv(void *ctx, void *buf, unsigned cap) { return nic_recv(ctx, buf, cap); }

/* Wait for a frame: spin a little first (a reply often comes within tens of
 * microseconds, and halting costs an interrupt and a wake-up), then let the
 * driver wait its way: by interrupt, halting the CPU, if the program asked
 * for nic_use_interrupts(), else by polling. */
#define SPIN_US 300

static void x_wait(void *ctx, uint64_t timeout_us)
{
    struct nic *n = ctx;
    uint64_t spin = timeout_us < SPIN_US ? timeout_us : SPIN_US, end = time_us() + spin;
    while (!nic_rx_pending(n) && time_us() < end)
        cpu_relax();
    if (!nic_rx_pending(n) && timeout_us > spin)
        nic_wait(n, timeout_us - spin);
}

static uint64_t x_now(void *ctx) { return time_us(); }

long nic_netif_open(struct nic_netif *x, unsigned vf)
{
    memset(x, 0, sizeof(*x));
    long r = nic_open(&x->nic, vf);
    if (r < 0)
        return r;
    struct net_config cfg;
    int c = net_config(&x->nic, &cfg);
    if (c < 0) {
        nic_close(&x->nic);
        return c;
    }
    struct netif *nif = &x->nif;
    nif->ctx = &x->nic;
    nif->send = x_send;
    nif->recv = x_recv;
    nif->wait = x_wait;
    nif->now_us = x_now;
    memcpy(nif->mac, x->nic.mac, 6);
    nif->ip = cfg.ip;
    nif->gateway = cfg.gateway;
    nif->prefix = cfg.prefix;
    /* the TSC's low bits at boot differ from run to run: enough for ISNs */
    uint64_t t = rdtsc();
    nif->seed = t * 0x9e3779b97f4a7c15ULL ^ (uint64_t)vf << 56 ^ time_us();
    return 0;
}

void nic_netif_close(struct nic_netif *x)
{
    nic_close(&x->nic);                 /* drains the TX ring first */
}

int net_opt(struct net_opts *o, int argc, char **argv, int *i)
{
    if (!strcmp(argv[*i], "-vf") && *i + 1 < argc) {
        o->vf = (unsigned)strtoul(argv[++*i], 0, 0);
        return 1;
    }
    if (!strcmp(argv[*i], "-irq")) {
        o->irq = 1;
        return 1;
    }
    if (!strcmp(argv[*i], "-a") && *i + 1 < argc) {
        o->addr = argv[++*i];
        return 1;
    }
    return 0;
}

int net_start(struct net *n, struct nic_netif *x, const struct net_opts *o, const char *prog)
{
    long r = nic_netif_open(x, o->vf);
    if (r < 0) {
        printf("%s: no NIC VF %u (%s): boot with --nic-vfs, and --net for the outside\n", prog,
               o->vf, xomb_errname(r));
        return -1;
    }
    if (o->addr && ip_parse_cidr(o->addr, &x->nif.ip, &x->nif.prefix) < 0) {
        printf("%s: bad address %s (want A.B.C.D/PREFIX)\n", prog, o->addr);
        nic_netif_close(x);
        return -1;
    }
    nic_use_interrupts(&x->nic, o->irq);
    net_init(n, &x->nif);
    return 0;
}
