/* The event loop: frames in, timers, and the helpers every layer shares.
 *
 * net_poll() is the only place the stack waits.  One round:
 *   1. take every frame the link has (bounded, so a flood cannot keep us
 *      here forever) and hand each to eth_input(), which dispatches it up
 *      the layers: Ethernet -> ARP or IP -> ICMP, UDP or TCP;
 *   2. if nothing came, sleep in the link's wait() until a frame may have
 *      arrived, the caller's timeout, or the next timer, whichever is first;
 *   3. run the timers: TCP retransmission and TIME_WAIT, ARP retries.
 * Everything else (answering pings, acknowledging data, retransmitting)
 * happens as a side effect of these three steps.
 */
#include "net.h"
#include "string.h"

#define POLL_BURST 64           /* frames handled per round at most */

static uint64_t now_us(struct net *n) { return n->nif->now_us(n->nif->ctx); }

void net_init(struct net *n, struct netif *nif)
{
    memset(n, 0, sizeof(*n));
    n->nif = nif;
    n->now = now_us(n);
    n->netmask = nif->prefix == 0 ? 0 : nif->prefix >= 32 ? 0xffffffffu
                                  : ~((1u << (32 - nif->prefix)) - 1);
    n->ip_id = (uint16_t)nif->seed;
    n->next_port = (uint16_t)(49152 + (nif->seed >> 16) % 16384);
    n->isn_counter = (uint32_t)(nif->seed >> 32);
}

void net_input(struct net *n, const void *frame, unsigned len)
{
    n->stats.rx_frames++;
    eth_input(n, frame, len);
}

void net_poll(struct net *n, uint64_t timeout_us)
{
    struct netif *nif = n->nif;
    uint64_t start = now_us(n);
    n->now = start;
    int got = 0;
    for (int i = 0; i < POLL_BURST; i++) {
        int len = nif->recv(nif->ctx, n->rx, sizeof(n->rx));
        if (len <= 0)
            break;
        got = 1;
        n->now = now_us(n);
        net_input(n, n->rx, (unsigned)len > sizeof(n->rx) ? sizeof(n->rx) : (unsigned)len);
    }
    if (!got && timeout_us) {
        uint64_t wait = timeout_us;
        uint64_t t = tcp_next_deadline(n);
        if (t) {
            uint64_t left = t > start ? t - start : 0;
            if (left < wait)
                wait = left;
        }
        if (wait)
            nif->wait(nif->ctx, wait);
        for (int i = 0; i < POLL_BURST; i++) {
            int len = nif->recv(nif->ctx, n->rx, sizeof(n->rx));
            if (len <= 0)
                break;
            n->now = now_us(n);
            net_input(n, n->rx, (unsigned)len > sizeof(n->rx) ? sizeof(n->rx) : (unsigned)len);
        }
    }
    n->now = now_us(n);
    tcp_timer(n);
    arp_timer(n);
}

void net_drain(struct net *n, uint64_t timeout_us)
{
    uint64_t end = now_us(n) + timeout_us;
    for (;;) {
        int busy = 0;
        for (int i = 0; i < TCP_CONNS; i++) {
            enum tcp_state s = n->tcp[i].state;
            if (n->tcp[i].closed && s != TCP_FREE && s != TCP_TIME_WAIT)
                busy = 1;
        }
        uint64_t t = now_us(n);
        if (!busy || t >= end)
            return;
        net_poll(n, end - t < 10000 ? end - t : 10000);
    }
}

uint16_t net_ephemeral_port(struct net *n)
{
    uint16_t p = n->next_port++;
    if (n->next_port < 49152)
        n->next_port = 49152;
    return p;
}

const char *net_strerror(int err)
{
    if (err < 0)
        err = -err;
    switch (err) {
    case 0: return "ok";
    case NET_EAGAIN: return "try again";
    case NET_ETIMEDOUT: return "timed out";
    case NET_ECONNREFUSED: return "connection refused";
    case NET_ECONNRESET: return "connection reset by peer";
    case NET_ENOTCONN: return "not connected";
    case NET_ENOBUFS: return "no free socket or buffer";
    case NET_EADDRINUSE: return "address in use";
    case NET_EINVAL: return "invalid argument";
    case NET_EPIPE: return "connection closed for sending";
    case NET_EMSGSIZE: return "message too long";
    default: return "unknown error";
    }
}

/* ---- dotted quads ----------------------------------------------------------- */

static const char *parse_quad(const char *s, uint32_t *ip)
{
    uint32_t v = 0;
    for (int part = 0; part < 4; part++) {
        if (part) {
            if (*s != '.')
                return 0;
            s++;
        }
        unsigned x = 0, digits = 0;
        while (*s >= '0' && *s <= '9' && digits < 4) {
            x = x * 10 + (unsigned)(*s++ - '0');
            digits++;
        }
        if (!digits || digits > 3 || x > 255)
            return 0;
        v = v << 8 | x;
    }
    *ip = v;
    return s;
}

int ip_parse(const char *s, uint32_t *ip)
{
    const char *e = parse_quad(s, ip);
    return e && !*e ? 0 : -1;
}

int ip_parse_cidr(const char *s, uint32_t *ip, unsigned *prefix)
{
    const char *e = parse_quad(s, ip);
    if (!e)
        return -1;
    if (!*e) {
        *prefix = 24;
        return 0;
    }
    if (*e++ != '/' || !*e)
        return -1;
    unsigned p = 0;
    while (*e >= '0' && *e <= '9' && p <= 32)
        p = p * 10 + (unsigned)(*e++ - '0');
    if (*e || p > 32)
        return -1;
    *prefix = p;
    return 0;
}

char *ip_format(uint32_t ip, char buf[16])
{
    char *p = buf;
    for (int i = 3; i >= 0; i--) {
        unsigned b = (ip >> (8 * i)) & 0xff;
        if (b >= 100)
            *p++ = (char)('0' + b / 100);
        if (b >= 10)
            *p++ = (char)('0' + b / 10 % 10);
        *p++ = (char)('0' + b % 10);
        if (i)
            *p++ = '.';
    }
    *p = 0;
    return buf;
}
