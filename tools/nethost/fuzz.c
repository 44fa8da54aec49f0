/* A loopback harness for fuzzing the stack's input path
 * (tests/test_netstack_host.py loads it as a shared library with ctypes).
 *
 * The netif sends into a ring the test reads back (so a test can complete
 * a handshake with the stack's real sequence numbers), receives nothing on
 * its own, and has a clock the test moves.  After every input the test
 * calls nf_check(), which verifies the invariants of every TCP connection:
 * a hostile frame must neither crash the stack nor bend its state.
 */
#include <stdint.h>
#include <string.h>
#include "net/net.h"

#define SENT_MAX 64
static uint8_t sent[SENT_MAX][NET_FRAME_MAX];
static unsigned sent_len[SENT_MAX], sent_head, sent_count;
static uint64_t clock_us = 1000000;
static struct netif nif;
static struct net net;
static struct udp_sock *udp7;
static struct tcp_conn *listener;

static int fz_send(void *ctx, const void *frame, unsigned len)
{
    if (len > NET_FRAME_MAX)
        return -1;
    unsigned i = (sent_head + sent_count) % SENT_MAX;
    if (sent_count == SENT_MAX) {       /* keep the newest */
        sent_head = (sent_head + 1) % SENT_MAX;
        sent_count--;
    }
    memcpy(sent[i], frame, len);
    sent_len[i] = len;
    sent_count++;
    return 0;
}
static int fz_recv(void *ctx, void *buf, unsigned cap) { return 0; }
static void fz_wait(void *ctx, uint64_t t) { clock_us += t; }
static uint64_t fz_now(void *ctx) { return clock_us; }

/* A stack at 10.0.2.15/24 (gateway .1) with the given MAC, a UDP socket on
 * port 7 and a TCP listener on port 80 (backlog 2). */
void nf_init(const uint8_t mac[6], uint64_t seed)
{
    memset(&nif, 0, sizeof(nif));
    memcpy(nif.mac, mac, 6);
    nif.ip = 0x0a00020f;
    nif.gateway = 0x0a000201;
    nif.prefix = 24;
    nif.seed = seed;
    nif.send = fz_send;
    nif.recv = fz_recv;
    nif.wait = fz_wait;
    nif.now_us = fz_now;
    sent_head = sent_count = 0;
    net_init(&net, &nif);
    udp7 = udp_bind(&net, 7);
    listener = tcp_listen(&net, 80, 2);
}

void nf_input(const uint8_t *frame, unsigned len)
{
    net.now = clock_us;
    net_input(&net, frame, len);
}

/* Move the clock and run the timers. */
void nf_advance(uint64_t us)
{
    clock_us += us;
    net_poll(&net, 0);
}

/* Take the oldest frame the stack sent: its length, 0 if none. */
unsigned nf_take(uint8_t *buf, unsigned cap)
{
    if (!sent_count)
        return 0;
    unsigned len = sent_len[sent_head] < cap ? sent_len[sent_head] : cap;
    memcpy(buf, sent[sent_head], len);
    sent_head = (sent_head + 1) % SENT_MAX;
    sent_count--;
    return len;
}

/* Accept a connection on port 80 if one is established: 1, else 0; then
 * tcp_send(data) and, if close, tcp_close: exercises the send side. */
int nf_accept_and_send(const uint8_t *data, unsigned len, int close)
{
    struct tcp_conn *c;
    if (tcp_accept(&net, listener, &c, 0) != 0)
        return 0;
    tcp_send(&net, c, data, len);
    if (close)
        tcp_close(&net, c);
    return 1;
}

/* tcp_send on the first connection the program holds: what it returns. */
int nf_send(const uint8_t *data, unsigned len)
{
    for (int i = 0; i < TCP_CONNS; i++) {
        struct tcp_conn *c = &net.tcp[i];
        if (c->accepted && c->state != TCP_LISTEN && c->state != TCP_FREE)
            return tcp_send(&net, c, data, len);
    }
    return -100;
}

/* Accept a connection on port 80 and read from it without waiting: what
 * tcp_recv says (-NET_EAGAIN for a fresh connection); -100 if none. */
int nf_accept_recv(void)
{
    struct tcp_conn *c;
    uint8_t buf[64];
    if (tcp_accept(&net, listener, &c, 0) != 0)
        return -100;
    return tcp_recv(&net, c, buf, sizeof(buf));
}

/* Read whatever the program side of port 7 / accepted connections has. */
int nf_drain_apps(void)
{
    uint8_t buf[2048];
    int total = 0, r;
    while ((r = udp_recvfrom(&net, udp7, buf, sizeof(buf), 0, 0, 0)) >= 0)
        total += r;
    for (int i = 0; i < TCP_CONNS; i++) {
        struct tcp_conn *c = &net.tcp[i];
        if (c->accepted && c->state != TCP_LISTEN && c->state != TCP_FREE)
            while ((r = tcp_recv(&net, c, buf, sizeof(buf))) > 0)
                total += r;
    }
    return total;
}

/* 0 if every connection is sane, else a code saying what broke. */
int nf_check(void)
{
    for (int i = 0; i < TCP_CONNS; i++) {
        struct tcp_conn *c = &net.tcp[i];
        if ((unsigned)c->state > TCP_LAST_ACK)
            return 1;
        if (c->state == TCP_FREE || c->state == TCP_LISTEN)
            continue;
        if (c->snd_len > TCP_SNDBUF || c->rcv_len > TCP_RCVBUF)
            return 2;
        if (c->snd_head >= TCP_SNDBUF || c->rcv_head >= TCP_RCVBUF)
            return 3;
        if (c->state == TCP_CLOSED)
            continue;
        if (seq_gt(c->snd_una, c->snd_nxt) || seq_gt(c->snd_nxt, c->snd_max))
            return 4;
        if (c->snd_max - c->snd_una > TCP_SNDBUF + 2)
            return 5;
        if (c->mss && (c->mss < 64 || c->mss > TCP_MSS))
            return 6;
        if (c->listener && c->listener->state != TCP_LISTEN)
            return 7;
    }
    return 0;
}

/* Counters for the test to see where frames went. */
uint64_t nf_stat(int which)
{
    const uint64_t *s = (const uint64_t *)&net.stats;
    return which >= 0 && (unsigned)which < sizeof(net.stats) / 8 ? s[which] : 0;
}

/* A connection's numbers, for tests: 0 rto_us, 1 srtt_us, 2 rttvar_us, 3 snd_wnd,
 * 4 rcv_len, 5 snd_len, 6 retries. */
uint32_t nf_conn(int i, int which)
{
    if (i < 0 || i >= TCP_CONNS)
        return 0;
    const struct tcp_conn *c = &net.tcp[i];
    uint32_t v[] = {c->rto_us, c->srtt_us, c->rttvar_us, c->snd_wnd, c->rcv_len, c->snd_len,
                    c->retries};
    return which >= 0 && which < 7 ? v[which] : 0;
}

/* Close the program's side of every accepted connection. */
void nf_close_all(void)
{
    for (int i = 0; i < TCP_CONNS; i++) {
        struct tcp_conn *c = &net.tcp[i];
        if (c->accepted && c->state != TCP_LISTEN && c->state != TCP_FREE && !c->closed)
            tcp_close(&net, c);
    }
}

int nf_tcp_state(int i) { return i >= 0 && i < TCP_CONNS ? (int)net.tcp[i].state : -1; }
