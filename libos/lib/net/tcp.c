/* TCP (RFC 793, 1122, 6298, 5961): a reliable byte stream over IP.
 *
 *   | source port | destination port |
 *   |        sequence number         |
 *   |     acknowledgment number      |
 *   | offset | flags |    window     |
 *   |   checksum    | urgent pointer |
 *   | options (MSS) ...              | data ...
 *
 * Every byte has a sequence number; SYN and FIN take one each.  The
 * receiver acknowledges the next byte it expects and advertises how many
 * more it can buffer (its window).  The sender keeps what it sent until it
 * is acknowledged and sends again what a timer says was lost.
 *
 * The state machine (the RFC 793 diagram; * = the program's call):
 *
 *   CLOSED --*connect, send SYN--> SYN_SENT --rcv SYN+ACK, send ACK--> ESTABLISHED
 *   *listen: LISTEN --rcv SYN, send SYN+ACK--> (a new connection) SYN_RCVD
 *   SYN_RCVD --rcv ACK of SYN--> ESTABLISHED  (it waits for *accept)
 *   ESTABLISHED --*close, send FIN--> FIN_WAIT_1 --rcv ACK of FIN--> FIN_WAIT_2
 *   FIN_WAIT_1 --rcv FIN, send ACK--> CLOSING --rcv ACK of FIN--> TIME_WAIT
 *   FIN_WAIT_2 --rcv FIN, send ACK--> TIME_WAIT --2 MSL--> (free)
 *   ESTABLISHED --rcv FIN, send ACK--> CLOSE_WAIT --*close, send FIN--> LAST_ACK
 *   LAST_ACK --rcv ACK of FIN--> (free)
 *   any state --rcv acceptable RST, or too many timeouts--> CLOSED (err set)
 *
 * Where things happen:
 *   tcp_input()   checks a segment (checksum, window), then: the
 *                 handshake, ACK processing (frees acknowledged bytes,
 *                 takes an RTT sample), data into the receive buffer, FIN
 *   tcp_output()  sends whatever the send window allows: SYN, new data
 *                 (at most mss per segment, at most snd_wnd unacknowledged),
 *                 FIN after the last byte; arms the retransmission timer
 *   tcp_timer()   the retransmission timeout: back off, go back to snd_una
 *                 and send again (go-back-N); TIME_WAIT expiry
 *   process_ack() also: fast retransmit on the third duplicate ACK
 *
 * Simplifications, on purpose (docs/NETWORK.md):
 *   - out-of-order segments are dropped (and a duplicate ACK sent): the
 *     peer retransmits them in order;
 *   - no congestion control (no slow start, no congestion window): we
 *     send as much as the peer's window allows; fast retransmit on the
 *     third duplicate ACK, but no fast recovery;
 *   - every data segment is acknowledged at once (no delayed ACKs), no
 *     Nagle, no window scaling or timestamps, no urgent data;
 *   - the ISN is a hash of the connection and a secret plus a clock
 *     (RFC 6528), the secret from the netif's seed (rdtsc in the guest).
 */
#include "net.h"
#include "string.h"

#define TCP_HLEN 20
#define F_FIN 0x01
#define F_SYN 0x02
#define F_RST 0x04
#define F_PSH 0x08
#define F_ACK 0x10
#define F_URG 0x20
#define TCP_DEFAULT_MSS 536     /* RFC 1122: what to assume without the option */

struct seg {                    /* a received segment, parsed */
    uint32_t seq, ack;
    uint8_t flags;
    uint32_t wnd;
    uint16_t mss;               /* 0: no MSS option */
    const uint8_t *data;
    unsigned len;               /* data bytes */
};

static struct tcp_conn *conn_of(struct net *n, uint32_t rip, uint16_t lport, uint16_t rport)
{
    for (int i = 0; i < TCP_CONNS; i++) {
        struct tcp_conn *c = &n->tcp[i];
        if (c->state != TCP_FREE && c->state != TCP_LISTEN && c->state != TCP_CLOSED &&
            c->lport == lport && c->rport == rport && c->rip == rip)
            return c;
    }
    return 0;
}

static struct tcp_conn *listener_of(struct net *n, uint16_t lport)
{
    for (int i = 0; i < TCP_CONNS; i++)
        if (n->tcp[i].state == TCP_LISTEN && n->tcp[i].lport == lport)
            return &n->tcp[i];
    return 0;
}

/* A free slot; if there is none, the TIME_WAIT connection closest to its end
 * (a server that closes first collects them: with a small pool, waiting 2 MSL
 * for each would refuse new clients, so the oldest gives way). */
static struct tcp_conn *conn_alloc(struct net *n)
{
    struct tcp_conn *c = 0;
    for (int i = 0; i < TCP_CONNS && (!c || c->state != TCP_FREE); i++) {
        struct tcp_conn *k = &n->tcp[i];
        if (k->state == TCP_FREE ||
            (k->state == TCP_TIME_WAIT && k->closed && (!c || k->tw_deadline < c->tw_deadline)))
            c = k;
    }
    if (!c)
        return 0;
    /* the buffers need no clearing: only bytes we wrote are read */
    memset(c, 0, offsetof(struct tcp_conn, sndbuf));
    c->state = TCP_CLOSED;
    return c;
}

static void conn_free(struct tcp_conn *c) { c->state = TCP_FREE; }

/* RFC 6528: ISN = a clock (4 us ticks) + a keyed hash of the connection. */
static uint32_t tcp_isn(struct net *n, uint32_t rip, uint16_t lport, uint16_t rport)
{
    uint64_t h = n->nif->seed ^ 0x9e3779b97f4a7c15ULL;
    uint64_t parts[3] = {rip, (uint64_t)lport << 16 | rport, n->nif->ip};
    for (int i = 0; i < 3; i++) {
        h ^= parts[i];
        h *= 0xff51afd7ed558ccdULL;
        h ^= h >> 33;
    }
    return (uint32_t)h + (uint32_t)(n->now / 4) + n->isn_counter++ * 64000;
}

/* The window we can offer: free space in the receive buffer. */
static uint32_t rcv_window(const struct tcp_conn *c)
{
    uint32_t w = TCP_RCVBUF - c->rcv_len;
    return w > 0xffff ? 0xffff : w;
}

/* ---- output ----------------------------------------------------------------- */

/* The header fields of one outgoing segment. */
struct seg_out {
    uint32_t rip;
    uint16_t lport, rport;
    uint32_t seq, ack;
    uint8_t flags;
    uint16_t wnd;
};

/* Build and send one segment; data: len bytes from c's send buffer at
 * offset off (from snd_una), copied straight into the frame. */
static int output_segment(struct net *n, const struct seg_out *o, const struct tcp_conn *c,
                          uint32_t off, unsigned len)
{
    uint8_t *t = n->tx + NET_PAYLOAD;
    unsigned hlen = TCP_HLEN + ((o->flags & F_SYN) ? 4 : 0);
    net_put16(t, o->lport);
    net_put16(t + 2, o->rport);
    net_put32(t + 4, o->seq);
    net_put32(t + 8, (o->flags & F_ACK) ? o->ack : 0);
    t[12] = (uint8_t)((hlen / 4) << 4);
    t[13] = o->flags;
    net_put16(t + 14, o->wnd);
    net_put16(t + 16, 0);
    net_put16(t + 18, 0);
    if (o->flags & F_SYN) {             /* the MSS option: kind 2, length 4 */
        t[20] = 2;
        t[21] = 4;
        net_put16(t + 22, TCP_MSS);
    }
    for (unsigned i = 0; i < len;) {    /* the send buffer is a ring: maybe two pieces */
        uint32_t at = (c->snd_head + off + i) & (TCP_SNDBUF - 1);
        unsigned k = TCP_SNDBUF - at < len - i ? TCP_SNDBUF - at : len - i;
        memcpy(t + hlen + i, c->sndbuf + at, k);
        i += k;
    }
    net_put16(t + 16, net_csum_fold(net_csum_add(
        net_pseudo_sum(n->nif->ip, o->rip, IP_PROTO_TCP, hlen + len), t, hlen + len)));
    return ip_output(n, o->rip, IP_PROTO_TCP, hlen + len);
}

/* A segment on connection c: our current ACK and window go with it. */
static int send_segment(struct net *n, struct tcp_conn *c, uint32_t seq, uint8_t flags,
                        uint32_t off, unsigned len)
{
    c->rcv_adv = rcv_window(c);
    struct seg_out o = {.rip = c->rip, .lport = c->lport, .rport = c->rport, .seq = seq,
                        .ack = c->rcv_nxt, .flags = flags, .wnd = (uint16_t)c->rcv_adv};
    return output_segment(n, &o, c, off, len);
}

/* A reset for a segment that has no connection (RFC 793 p. 36): it must
 * look acceptable to the sender, so its numbers come from the segment. */
static void send_reset(struct net *n, const struct ip_info *ip, uint16_t lport, uint16_t rport,
                       const struct seg *s)
{
    if (s->flags & F_RST)
        return;                         /* never answer a reset: no RST storms */
    struct seg_out o = {.rip = ip->src, .lport = lport, .rport = rport};
    n->stats.tcp_rst_sent++;
    if (s->flags & F_ACK) {
        o.seq = s->ack;
        o.flags = F_RST;
    } else {
        o.ack = s->seq + s->len + ((s->flags & F_SYN) ? 1 : 0) + ((s->flags & F_FIN) ? 1 : 0);
        o.flags = F_RST | F_ACK;
    }
    output_segment(n, &o, 0, 0, 0);
}

static void send_ack(struct net *n, struct tcp_conn *c)
{
    send_segment(n, c, c->snd_nxt, F_ACK, 0, 0);
}

static void timer_start(struct net *n, struct tcp_conn *c)
{
    c->rto_deadline = n->now + c->rto_us;
}

/* Send what the state and the windows allow.  force: the retransmission
 * timer fired with a zero window: probe it with one byte (the persist
 * timer, folded into the retransmission timer). */
static void tcp_output(struct net *n, struct tcp_conn *c, int force)
{
    if (c->state == TCP_SYN_SENT || c->state == TCP_SYN_RCVD) {
        if (c->snd_nxt == c->iss) {     /* (re)send our SYN */
            send_segment(n, c, c->iss, c->state == TCP_SYN_SENT ? F_SYN : F_SYN | F_ACK, 0, 0);
            c->snd_nxt = c->iss + 1;
            if (seq_gt(c->snd_nxt, c->snd_max))
                c->snd_max = c->snd_nxt;
            if (!c->rto_deadline)
                timer_start(n, c);
        }
        return;
    }
    if (c->state != TCP_ESTABLISHED && c->state != TCP_CLOSE_WAIT &&
        c->state != TCP_FIN_WAIT_1 && c->state != TCP_CLOSING && c->state != TCP_LAST_ACK)
        return;
    for (;;) {
        uint32_t off = c->snd_nxt - c->snd_una;     /* data already sent, unacked */
        if (off >= c->snd_len)
            break;
        /* the usable window: what the peer allows beyond what is in flight */
        uint32_t wnd_end = c->snd_una + c->snd_wnd;
        uint32_t usable = seq_gt(wnd_end, c->snd_nxt) ? wnd_end - c->snd_nxt : 0;
        if (!usable && force && off == 0)
            usable = 1;                 /* a window probe */
        uint32_t k = c->snd_len - off;
        if (k > c->mss)
            k = c->mss;
        if (k > usable)
            k = usable;
        if (!k)
            break;
        uint8_t flags = F_ACK | (off + k == c->snd_len ? F_PSH : 0);
        send_segment(n, c, c->snd_nxt, flags, off, k);
        if (!c->rtt_timing && c->snd_nxt == c->snd_max) {  /* time new data only */
            c->rtt_timing = 1;
            c->rtt_seq = c->snd_nxt + k;
            c->rtt_start = n->now;
        }
        c->snd_nxt += k;
        if (seq_gt(c->snd_nxt, c->snd_max))
            c->snd_max = c->snd_nxt;
        if (!c->rto_deadline)
            timer_start(n, c);
    }
    /* FIN: after the last byte, once the program closed */
    if (c->fin_queued && !c->fin_acked && c->snd_nxt == c->snd_una + c->snd_len) {
        send_segment(n, c, c->snd_nxt, F_FIN | F_ACK, 0, 0);
        c->snd_nxt++;
        if (seq_gt(c->snd_nxt, c->snd_max))
            c->snd_max = c->snd_nxt;
        if (!c->rto_deadline)
            timer_start(n, c);
    }
    /* nothing in flight but data waits for a window: keep a timer to probe */
    if (!c->rto_deadline && c->snd_len && c->snd_wnd == 0)
        timer_start(n, c);
}

/* ---- the timers ---------------------------------------------------------------- */

/* RFC 6298: smooth the RTT samples, RTO = SRTT + 4 RTTVAR. */
static void rtt_sample(struct tcp_conn *c, uint32_t r)
{
    if (!c->srtt_us) {
        c->srtt_us = r ? r : 1;
        c->rttvar_us = r / 2;
    } else {
        uint32_t d = c->srtt_us > r ? c->srtt_us - r : r - c->srtt_us;
        c->rttvar_us = (3 * c->rttvar_us + d) / 4;
        c->srtt_us = (7 * c->srtt_us + r) / 8;
    }
    uint32_t rto = c->srtt_us + 4 * c->rttvar_us;
    c->rto_us = rto < TCP_RTO_MIN_US ? TCP_RTO_MIN_US : rto > TCP_RTO_MAX_US ? TCP_RTO_MAX_US : rto;
}

/* The connection is dead (reset or timed out).  If the program holds it, it
 * stays CLOSED so the program sees why; otherwise its slot is free now. */
static void conn_die(struct tcp_conn *c, int err)
{
    c->err = err;
    c->rto_deadline = 0;
    c->snd_len = 0;
    if (c->closed || (!c->accepted && c->listener))
        conn_free(c);
    else
        c->state = TCP_CLOSED;
}

static void enter_time_wait(struct net *n, struct tcp_conn *c)
{
    c->state = TCP_TIME_WAIT;
    c->rto_deadline = 0;
    c->tw_deadline = n->now + TCP_TIME_WAIT_US;
}

void tcp_timer(struct net *n)
{
    for (int i = 0; i < TCP_CONNS; i++) {
        struct tcp_conn *c = &n->tcp[i];
        if (c->state == TCP_TIME_WAIT && n->now >= c->tw_deadline) {
            if (c->closed || (!c->accepted && c->listener))
                conn_free(c);
            else
                c->state = TCP_CLOSED;  /* the program still holds it: it reads EOF */
            continue;
        }
        if (!c->rto_deadline || n->now < c->rto_deadline)
            continue;
        /* the retransmission timeout */
        if (++c->retries > TCP_MAX_RETRIES) {
            if (c->state != TCP_SYN_SENT)
                send_segment(n, c, c->snd_nxt, F_RST | F_ACK, 0, 0);
            conn_die(c, NET_ETIMEDOUT);
            continue;
        }
        c->rto_us = c->rto_us * 2 > TCP_RTO_MAX_US ? TCP_RTO_MAX_US : c->rto_us * 2;
        c->rtt_timing = 0;              /* Karn: never time a retransmitted segment */
        c->rto_deadline = 0;
        int probe = c->snd_nxt == c->snd_una && c->snd_len && c->snd_wnd == 0;
        if (!probe) {
            c->retransmits++;
            n->stats.tcp_retransmits++;
        }
        /* go back to the oldest unacknowledged byte and send from there */
        c->snd_nxt = (c->state == TCP_SYN_SENT || c->state == TCP_SYN_RCVD) ? c->iss : c->snd_una;
        tcp_output(n, c, 1);
        if (!c->rto_deadline && (c->snd_len || c->snd_nxt != c->snd_una))
            timer_start(n, c);
    }
}

uint64_t tcp_next_deadline(struct net *n)
{
    uint64_t t = 0;
    for (int i = 0; i < TCP_CONNS; i++) {
        struct tcp_conn *c = &n->tcp[i];
        uint64_t d = c->state == TCP_TIME_WAIT ? c->tw_deadline
                   : c->state != TCP_FREE ? c->rto_deadline : 0;
        if (d && (!t || d < t))
            t = d;
    }
    return t;
}

/* ---- input -------------------------------------------------------------------- */

static int parse(const struct ip_info *ip, const uint8_t *p, unsigned len, struct seg *s)
{
    if (len < TCP_HLEN)
        return -1;
    unsigned hlen = (unsigned)(p[12] >> 4) * 4;
    if (hlen < TCP_HLEN || hlen > len)
        return -1;
    if (net_csum_fold(net_csum_add(net_pseudo_sum(ip->src, ip->dst, IP_PROTO_TCP, len), p, len)))
        return -1;
    s->seq = net_get32(p + 4);
    s->ack = net_get32(p + 8);
    s->flags = p[13] & 0x3f;
    s->wnd = net_get16(p + 14);
    s->mss = 0;
    s->data = p + hlen;
    s->len = len - hlen;
    /* options: kind, length, value; bounded by the header, never trusted */
    for (unsigned i = TCP_HLEN; i < hlen;) {
        uint8_t kind = p[i];
        if (kind == 0)
            break;                      /* end of options */
        if (kind == 1) {
            i++;                        /* no-op (padding) */
            continue;
        }
        if (i + 1 >= hlen || p[i + 1] < 2 || i + p[i + 1] > hlen)
            break;                      /* malformed: ignore the rest */
        if (kind == 2 && p[i + 1] == 4)
            s->mss = net_get16(p + i + 2);
        i += p[i + 1];
    }
    return 0;
}

static void set_mss(struct tcp_conn *c, uint16_t peer_mss)
{
    uint16_t m = peer_mss ? peer_mss : TCP_DEFAULT_MSS;
    if (m > TCP_MSS)
        m = TCP_MSS;
    if (m < 64)
        m = 64;                         /* a silly MSS would make silly segments */
    c->mss = m;
}

/* RFC 793's acceptability test: does any of the segment fall in our window? */
static int acceptable(const struct tcp_conn *c, const struct seg *s)
{
    uint32_t seglen = s->len + ((s->flags & F_SYN) ? 1 : 0) + ((s->flags & F_FIN) ? 1 : 0);
    uint32_t wnd = TCP_RCVBUF - c->rcv_len;
    if (seglen == 0 && wnd == 0)
        return s->seq == c->rcv_nxt;
    if (seglen == 0)
        return seq_ge(s->seq, c->rcv_nxt) && seq_lt(s->seq, c->rcv_nxt + wnd);
    if (wnd == 0)
        return 0;
    uint32_t last = s->seq + seglen - 1;
    return (seq_ge(s->seq, c->rcv_nxt) && seq_lt(s->seq, c->rcv_nxt + wnd)) ||
           (seq_ge(last, c->rcv_nxt) && seq_lt(last, c->rcv_nxt + wnd));
}

/* A SYN arrived for a listener: make a connection in SYN_RCVD. */
static void passive_open(struct net *n, struct tcp_conn *l, const struct ip_info *ip,
                         uint16_t rport, const struct seg *s)
{
    unsigned waiting = 0;
    for (int i = 0; i < TCP_CONNS; i++)
        if (n->tcp[i].listener == l && !n->tcp[i].accepted && n->tcp[i].state != TCP_FREE)
            waiting++;
    if (waiting >= l->backlog)
        return;                         /* drop the SYN: the peer will try again */
    struct tcp_conn *c = conn_alloc(n);
    if (!c)
        return;
    c->rip = ip->src;
    c->lport = l->lport;
    c->rport = rport;
    c->listener = l;
    c->irs = s->seq;
    c->rcv_nxt = s->seq + 1;
    c->iss = tcp_isn(n, c->rip, c->lport, c->rport);
    c->snd_una = c->snd_nxt = c->snd_max = c->iss;
    c->snd_wnd = s->wnd;
    c->snd_wl1 = s->seq;
    c->snd_wl2 = 0;
    c->rto_us = TCP_RTO_INITIAL_US;
    set_mss(c, s->mss);
    c->state = TCP_SYN_RCVD;
    tcp_output(n, c, 0);                /* SYN+ACK */
}

/* SYN_SENT: we wait for the peer's SYN+ACK. */
static void input_syn_sent(struct net *n, struct tcp_conn *c, const struct ip_info *ip,
                           const struct seg *s)
{
    int ack_ok = (s->flags & F_ACK) && seq_gt(s->ack, c->iss) && seq_le(s->ack, c->snd_max);
    if ((s->flags & F_ACK) && !ack_ok) {
        send_reset(n, ip, c->lport, c->rport, s);
        return;
    }
    if (s->flags & F_RST) {
        if (ack_ok)
            conn_die(c, NET_ECONNREFUSED);
        return;
    }
    if (!(s->flags & F_SYN) || (s->flags & F_FIN))
        return;
    c->irs = s->seq;
    c->rcv_nxt = s->seq + 1;
    set_mss(c, s->mss);
    c->snd_wnd = s->wnd;
    c->snd_wl1 = s->seq;
    c->snd_wl2 = s->ack;
    if (ack_ok) {
        c->snd_una = s->ack;
        c->snd_nxt = s->ack;
        c->rto_deadline = 0;
        c->retries = 0;
        if (c->rtt_timing)
            rtt_sample(c, (uint32_t)(n->now - c->rtt_start));
        c->rtt_timing = 0;
        c->state = TCP_ESTABLISHED;
        send_ack(n, c);
    } else {                            /* simultaneous open: both sent SYNs */
        c->state = TCP_SYN_RCVD;
        c->snd_nxt = c->iss;
        tcp_output(n, c, 0);
    }
}

/* The ACK field of a segment in a synchronized state (or SYN_RCVD). */
static int process_ack(struct net *n, struct tcp_conn *c, const struct ip_info *ip,
                       const struct seg *s)
{
    if (c->state == TCP_SYN_RCVD) {
        if (!seq_gt(s->ack, c->snd_una) || seq_gt(s->ack, c->snd_max)) {
            send_reset(n, ip, c->lport, c->rport, s);
            return -1;
        }
        c->state = TCP_ESTABLISHED;     /* the handshake is done */
        c->snd_una = c->iss + 1;        /* the SYN is acknowledged */
        if (seq_lt(c->snd_nxt, c->snd_una))
            c->snd_nxt = c->snd_una;
        c->snd_wnd = s->wnd;
        c->snd_wl1 = s->seq;
        c->snd_wl2 = s->ack;
        c->retries = 0;
        c->rto_deadline = 0;
        c->rto_us = TCP_RTO_INITIAL_US;
    }
    if (seq_gt(s->ack, c->snd_max)) {   /* acknowledges what we never sent */
        send_ack(n, c);
        return -1;
    }
    /* Fast retransmit (RFC 5681 3.2, without the congestion window): the
     * third duplicate ACK (nothing new acknowledged, no data, same open
     * window, data in flight) says a segment was lost while later ones arrived:
     * send the oldest one again now instead of waiting for the timer. */
    if (s->ack == c->snd_una && !s->len && !(s->flags & (F_SYN | F_FIN)) &&
        s->wnd == c->snd_wnd && s->wnd && c->snd_nxt != c->snd_una && c->snd_len) {
        if (++c->dupacks == 3) {
            send_segment(n, c, c->snd_una, F_ACK, 0, c->snd_len < c->mss ? c->snd_len : c->mss);
            c->rtt_timing = 0;          /* Karn */
            c->retransmits++;
            n->stats.tcp_retransmits++;
            n->stats.tcp_fast_retransmits++;
        }
    } else if (seq_gt(s->ack, c->snd_una)) {
        c->dupacks = 0;
    }
    if (seq_gt(s->ack, c->snd_una)) {
        uint32_t acked = s->ack - c->snd_una;
        uint32_t data = acked > c->snd_len ? c->snd_len : acked;
        c->snd_head = (c->snd_head + data) & (TCP_SNDBUF - 1);
        c->snd_len -= data;
        if (acked > data && c->fin_queued)
            c->fin_acked = 1;           /* the one sequence number past the data */
        c->snd_una = s->ack;
        if (seq_lt(c->snd_nxt, c->snd_una))
            c->snd_nxt = c->snd_una;    /* after a go-back, an ACK for the old flight */
        if (c->rtt_timing && seq_ge(s->ack, c->rtt_seq)) {
            rtt_sample(c, (uint32_t)(n->now - c->rtt_start));
            c->rtt_timing = 0;
        }
        c->retries = 0;
        /* restart the timer for what is still in flight, or stop it */
        c->rto_deadline = c->snd_una != c->snd_nxt ? n->now + c->rto_us : 0;
    }
    /* a window update: only from a segment newer than the last one used */
    if (seq_lt(c->snd_wl1, s->seq) || (c->snd_wl1 == s->seq && seq_le(c->snd_wl2, s->ack))) {
        if (c->snd_len && (s->wnd == 0 || c->snd_wnd == 0))
            c->retries = 0;             /* an answer to a window probe: the peer lives */
        c->snd_wnd = s->wnd;
        c->snd_wl1 = s->seq;
        c->snd_wl2 = s->ack;
    }
    if (c->fin_acked) {
        if (c->state == TCP_FIN_WAIT_1)
            c->state = TCP_FIN_WAIT_2;
        else if (c->state == TCP_CLOSING)
            enter_time_wait(n, c);
        else if (c->state == TCP_LAST_ACK) {
            conn_free(c);               /* the program closed it already */
            return -1;
        }
    }
    return 0;
}

/* In-order data into the receive buffer; returns 1 if we must ACK. */
static int process_data(struct tcp_conn *c, struct net *n, const struct seg *s)
{
    const uint8_t *d = s->data;
    uint32_t len = s->len, seq = s->seq;
    if (s->flags & F_SYN)
        seq++;                          /* a retransmitted SYN carrying data */
    if (seq_lt(seq, c->rcv_nxt)) {      /* partly old: skip what we have */
        uint32_t skip = c->rcv_nxt - seq;
        if (skip >= len)
            return len > 0;             /* all old: ACK so the peer stops resending */
        d += skip;
        len -= skip;
        seq = c->rcv_nxt;
    }
    if (seq != c->rcv_nxt) {
        n->stats.tcp_out_of_order++;    /* a gap before it: drop, ask again by ACK */
        return 1;
    }
    uint32_t room = TCP_RCVBUF - c->rcv_len;
    if (len > room)
        len = room;                     /* beyond our window: the peer resends it */
    for (uint32_t i = 0; i < len;) {
        uint32_t at = (c->rcv_head + c->rcv_len) & (TCP_RCVBUF - 1);
        uint32_t k = TCP_RCVBUF - at < len - i ? TCP_RCVBUF - at : len - i;
        memcpy(c->rcvbuf + at, d + i, k);
        c->rcv_len += k;
        i += k;
    }
    c->rcv_nxt += len;
    return s->len > 0;
}

void tcp_input(struct net *n, const struct ip_info *ip, const uint8_t *p, unsigned len)
{
    struct seg s;
    if (parse(ip, p, len, &s) < 0) {
        n->stats.drop_bad_tcp++;
        return;
    }
    uint16_t rport = net_get16(p), lport = net_get16(p + 2);
    if (!rport || !lport) {
        n->stats.drop_bad_tcp++;
        return;
    }
    struct tcp_conn *c = conn_of(n, ip->src, lport, rport);
    /* RFC 1122 4.2.2.13: a new SYN beyond what the old connection used may
     * reopen a connection in TIME_WAIT (a client reusing its port) */
    if (c && c->state == TCP_TIME_WAIT && (s.flags & (F_SYN | F_ACK | F_RST)) == F_SYN &&
        seq_gt(s.seq, c->rcv_nxt) && c->closed && listener_of(n, lport)) {
        conn_free(c);
        c = 0;
    }
    if (!c) {
        struct tcp_conn *l = listener_of(n, lport);
        if (!l) {
            send_reset(n, ip, lport, rport, &s);
            return;
        }
        /* LISTEN: only a plain SYN opens a connection */
        if (s.flags & F_RST)
            return;
        if (s.flags & F_ACK) {
            send_reset(n, ip, lport, rport, &s);
            return;
        }
        if ((s.flags & (F_SYN | F_FIN)) == F_SYN)
            passive_open(n, l, ip, rport, &s);
        else
            n->stats.drop_bad_tcp++;    /* SYN+FIN, no flags, FIN alone: nonsense */
        return;
    }
    if (c->state == TCP_SYN_SENT) {
        input_syn_sent(n, c, ip, &s);
        return;
    }

    /* 1. is it in our window? */
    if (!acceptable(c, &s)) {
        n->stats.tcp_out_of_window++;
        if (!(s.flags & F_RST))
            send_ack(n, c);             /* tell the peer what we expect */
        return;
    }
    /* 2. RST (RFC 5961): only the exact next sequence number kills us; any
     *    other in-window reset gets a "challenge ACK" (a blind attacker
     *    can't guess rcv_nxt exactly; a real peer answers the ACK with an
     *    exact RST) */
    if (s.flags & F_RST) {
        if (s.seq != c->rcv_nxt) {
            send_ack(n, c);
            return;
        }
        conn_die(c, c->state == TCP_SYN_RCVD ? NET_ECONNREFUSED : NET_ECONNRESET);
        return;
    }
    /* 3. a SYN in a synchronized state: challenge ACK too (RFC 5961 4.2) */
    if (s.flags & F_SYN) {
        if (c->state == TCP_SYN_RCVD && s.seq == c->irs) {
            c->snd_nxt = c->iss;        /* the peer lost our SYN+ACK: again */
            tcp_output(n, c, 0);
        } else {
            send_ack(n, c);
        }
        return;
    }
    /* 4. every later segment carries an ACK */
    if (!(s.flags & F_ACK)) {
        n->stats.drop_bad_tcp++;
        return;
    }
    if (process_ack(n, c, ip, &s) < 0)
        return;
    /* 5. data, in the states where the peer may still send */
    int need_ack = 0;
    if (s.len && (c->state == TCP_ESTABLISHED || c->state == TCP_FIN_WAIT_1 ||
                  c->state == TCP_FIN_WAIT_2))
        need_ack = process_data(c, n, &s);
    /* 6. FIN: only when everything before it has arrived */
    if ((s.flags & F_FIN) && s.seq + s.len == c->rcv_nxt - (c->fin_rcvd ? 1 : 0)) {
        need_ack = 1;
        if (!c->fin_rcvd) {
            c->fin_rcvd = 1;
            c->rcv_nxt++;
            if (c->state == TCP_ESTABLISHED)
                c->state = TCP_CLOSE_WAIT;
            else if (c->state == TCP_FIN_WAIT_1)
                c->state = c->fin_acked ? TCP_TIME_WAIT : TCP_CLOSING;
            else if (c->state == TCP_FIN_WAIT_2)
                enter_time_wait(n, c);
            if (c->state == TCP_TIME_WAIT)
                enter_time_wait(n, c);
        } else if (c->state == TCP_TIME_WAIT) {
            enter_time_wait(n, c);      /* our last ACK was lost: restart 2 MSL */
        }
    }
    if (need_ack)
        send_ack(n, c);
    tcp_output(n, c, 0);                /* the window may have opened */
}

/* ---- the program's side --------------------------------------------------------- */

static uint64_t clock_us(struct net *n) { return n->nif->now_us(n->nif->ctx); }

struct tcp_conn *tcp_listen(struct net *n, uint16_t port, unsigned backlog)
{
    if (!port || listener_of(n, port))
        return 0;
    struct tcp_conn *l = conn_alloc(n);
    if (!l)
        return 0;
    l->state = TCP_LISTEN;
    l->lport = port;
    l->accepted = 1;
    l->backlog = (uint8_t)(backlog ? (backlog > TCP_CONNS ? TCP_CONNS : backlog) : 1);
    return l;
}

int tcp_accept(struct net *n, struct tcp_conn *l, struct tcp_conn **out, uint64_t timeout_us)
{
    if (!l || l->state != TCP_LISTEN)
        return -NET_EINVAL;
    uint64_t start = clock_us(n);
    for (;;) {
        for (int i = 0; i < TCP_CONNS; i++) {
            struct tcp_conn *c = &n->tcp[i];
            /* established, or already half closed by a quick peer */
            if (c->listener == l && !c->accepted &&
                (c->state == TCP_ESTABLISHED || c->state == TCP_CLOSE_WAIT)) {
                c->accepted = 1;
                *out = c;
                return 0;
            }
        }
        uint64_t t = clock_us(n);
        if (t - start >= timeout_us)
            return timeout_us ? -NET_ETIMEDOUT : -NET_EAGAIN;
        net_poll(n, timeout_us - (t - start));
    }
}

int tcp_connect(struct net *n, uint32_t ip, uint16_t port, struct tcp_conn **out,
                uint64_t timeout_us)
{
    if (!port || !ip)
        return -NET_EINVAL;
    struct tcp_conn *c = conn_alloc(n);
    if (!c)
        return -NET_ENOBUFS;
    n->now = clock_us(n);
    c->rip = ip;
    c->rport = port;
    do
        c->lport = net_ephemeral_port(n);
    while (conn_of(n, ip, c->lport, port) || listener_of(n, c->lport));
    c->accepted = 1;
    c->iss = tcp_isn(n, ip, c->lport, port);
    c->snd_una = c->snd_nxt = c->snd_max = c->iss;
    c->rto_us = TCP_RTO_INITIAL_US;
    c->mss = TCP_DEFAULT_MSS;
    c->state = TCP_SYN_SENT;
    c->rtt_timing = 1;
    c->rtt_seq = c->iss + 1;
    c->rtt_start = n->now;
    tcp_output(n, c, 0);
    uint64_t start = n->now;
    while (c->state == TCP_SYN_SENT || c->state == TCP_SYN_RCVD) {
        uint64_t t = clock_us(n);
        if (t - start >= timeout_us)
            break;
        net_poll(n, timeout_us - (t - start));
    }
    if (c->state == TCP_ESTABLISHED || c->state == TCP_CLOSE_WAIT) {
        *out = c;
        return 0;
    }
    int err = c->state == TCP_CLOSED ? c->err : NET_ETIMEDOUT;
    tcp_abort(n, c);
    return -err;
}

int tcp_send(struct net *n, struct tcp_conn *c, const void *buf, unsigned len)
{
    if (c->state == TCP_CLOSED)
        return -(c->err ? c->err : NET_ENOTCONN);
    if (c->fin_queued)
        return -NET_EPIPE;
    if (c->state != TCP_ESTABLISHED && c->state != TCP_CLOSE_WAIT)
        return -NET_ENOTCONN;
    uint32_t room = TCP_SNDBUF - c->snd_len;
    uint32_t k = len < room ? len : room;
    const uint8_t *p = buf;
    for (uint32_t i = 0; i < k;) {
        uint32_t at = (c->snd_head + c->snd_len) & (TCP_SNDBUF - 1);
        uint32_t m = TCP_SNDBUF - at < k - i ? TCP_SNDBUF - at : k - i;
        memcpy(c->sndbuf + at, p + i, m);
        c->snd_len += m;
        i += m;
    }
    n->now = clock_us(n);
    tcp_output(n, c, 0);
    return (int)k;
}

int tcp_send_all(struct net *n, struct tcp_conn *c, const void *buf, unsigned len,
                 uint64_t timeout_us)
{
    const uint8_t *p = buf;
    unsigned done = 0;
    uint64_t last = clock_us(n);        /* the timeout counts from the last progress */
    while (done < len) {
        int r = tcp_send(n, c, p + done, len - done);
        if (r < 0)
            return r;
        uint64_t t = clock_us(n);
        if (r > 0)
            last = t;
        done += (unsigned)r;
        if (done == len)
            break;
        if (t - last >= timeout_us)
            return -NET_ETIMEDOUT;
        net_poll(n, timeout_us - (t - last));
    }
    return (int)len;
}

int tcp_recv(struct net *n, struct tcp_conn *c, void *buf, unsigned cap)
{
    if (!c->rcv_len) {
        if (c->fin_rcvd)
            return 0;
        if (c->state == TCP_CLOSED)
            return c->err ? -c->err : 0;
        return -NET_EAGAIN;
    }
    uint32_t k = cap < c->rcv_len ? cap : c->rcv_len;
    uint8_t *p = buf;
    for (uint32_t i = 0; i < k;) {
        uint32_t m = TCP_RCVBUF - c->rcv_head < k - i ? TCP_RCVBUF - c->rcv_head : k - i;
        memcpy(p + i, c->rcvbuf + c->rcv_head, m);
        c->rcv_head = (c->rcv_head + m) & (TCP_RCVBUF - 1);
        c->rcv_len -= m;
        i += m;
    }
    /* Reading made room.  If the peer thinks our window is (nearly) shut,
     * tell it about the space now, or it waits for its persist timer. */
    if (c->rcv_adv < TCP_RCVBUF / 2 && rcv_window(c) >= TCP_RCVBUF / 2 &&
        c->state != TCP_CLOSED && c->state != TCP_LISTEN) {
        n->now = clock_us(n);
        send_ack(n, c);
    }
    return (int)k;
}

int tcp_recv_wait(struct net *n, struct tcp_conn *c, void *buf, unsigned cap,
                  uint64_t timeout_us)
{
    uint64_t start = clock_us(n);
    for (;;) {
        int r = tcp_recv(n, c, buf, cap);
        if (r != -NET_EAGAIN)
            return r;
        uint64_t t = clock_us(n);
        if (t - start >= timeout_us)
            return timeout_us ? -NET_ETIMEDOUT : -NET_EAGAIN;
        net_poll(n, timeout_us - (t - start));
    }
}

void tcp_abort(struct net *n, struct tcp_conn *c)
{
    if (c->state == TCP_LISTEN) {
        tcp_close(n, c);
        return;
    }
    if (c->state != TCP_FREE && c->state != TCP_CLOSED && c->state != TCP_TIME_WAIT &&
        c->state != TCP_SYN_SENT) {
        n->now = clock_us(n);
        n->stats.tcp_rst_sent++;
        send_segment(n, c, c->snd_nxt, F_RST | F_ACK, 0, 0);
    }
    conn_free(c);
}

void tcp_close(struct net *n, struct tcp_conn *c)
{
    n->now = clock_us(n);
    c->closed = 1;
    switch (c->state) {
    case TCP_LISTEN:
        for (int i = 0; i < TCP_CONNS; i++) {
            struct tcp_conn *k = &n->tcp[i];
            if (k->state != TCP_FREE && k->listener == c) {
                if (!k->accepted)
                    tcp_abort(n, k);    /* nobody will ever accept it */
                else
                    k->listener = 0;
            }
        }
        conn_free(c);
        return;
    case TCP_ESTABLISHED:
        c->state = TCP_FIN_WAIT_1;
        break;
    case TCP_CLOSE_WAIT:
        c->state = TCP_LAST_ACK;
        break;
    case TCP_SYN_RCVD:                  /* (never held by a program: accept waits) */
        tcp_abort(n, c);
        return;
    case TCP_FIN_WAIT_1:
    case TCP_FIN_WAIT_2:
    case TCP_CLOSING:
    case TCP_LAST_ACK:
        return;                         /* closed already */
    case TCP_TIME_WAIT:
        return;                         /* the timer frees it */
    default:                            /* CLOSED, SYN_SENT */
        conn_free(c);
        return;
    }
    c->fin_queued = 1;
    tcp_output(n, c, 0);
}

const char *tcp_state_name(enum tcp_state s)
{
    static const char *names[] = {
        "FREE", "CLOSED", "LISTEN", "SYN_SENT", "SYN_RCVD", "ESTABLISHED", "FIN_WAIT_1",
        "FIN_WAIT_2", "CLOSING", "TIME_WAIT", "CLOSE_WAIT", "LAST_ACK",
    };
    return (unsigned)s < sizeof(names) / sizeof(names[0]) ? names[s] : "?";
}
