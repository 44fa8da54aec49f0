/* ICMP (RFC 792), the part ping needs: echo request (type 8) and echo
 * reply (type 0).
 *
 *   | type | code | checksum | identifier | sequence | data ... |
 *
 * An echo request is answered with the same identifier, sequence and data.
 * icmp_ping() sends requests of its own and waits for the matching reply.
 * Other ICMP messages (unreachable, time exceeded) are counted and ignored.
 */
#include "net.h"
#include "string.h"

#define ICMP_ECHO_REPLY 0
#define ICMP_ECHO_REQUEST 8
#define ICMP_HLEN 8

void icmp_input(struct net *n, const struct ip_info *ip, const uint8_t *p, unsigned len)
{
    if (len < ICMP_HLEN || net_csum_fold(net_csum_add(0, p, len)) != 0) {
        n->stats.drop_bad_icmp++;
        return;
    }
    if (p[0] == ICMP_ECHO_REQUEST && p[1] == 0) {
        if (ip->dst != n->nif->ip)
            return;                     /* no answers to broadcast pings */
        if (len > NET_MTU - IP_HLEN)
            return;
        uint8_t *r = n->tx + NET_PAYLOAD;
        memcpy(r, p, len);
        r[0] = ICMP_ECHO_REPLY;
        net_put16(r + 2, 0);
        net_put16(r + 2, net_csum_fold(net_csum_add(0, r, len)));
        ip_output(n, ip->src, IP_PROTO_ICMP, len);
    } else if (p[0] == ICMP_ECHO_REPLY && p[1] == 0) {
        struct ping_state *s = &n->ping;
        if (!s->replied && s->sent_at && net_get16(p + 4) == s->id &&
            net_get16(p + 6) == s->seq) {
            s->replied = 1;
            s->ttl = ip->ttl;
            s->rtt_us = n->nif->now_us(n->nif->ctx) - s->sent_at;
        }
    } else {
        n->stats.drop_bad_icmp++;
    }
}

int icmp_ping(struct net *n, uint32_t dst, uint16_t seq, unsigned len, uint64_t timeout_us,
              uint64_t *rtt_us, uint8_t *ttl)
{
    if (len > NET_MTU - IP_HLEN - ICMP_HLEN)
        return -NET_EMSGSIZE;
    struct ping_state *s = &n->ping;
    if (!s->id)
        s->id = (uint16_t)(n->nif->seed >> 8 | 1);
    s->seq = seq;
    s->replied = 0;
    uint8_t *r = n->tx + NET_PAYLOAD;
    r[0] = ICMP_ECHO_REQUEST;
    r[1] = 0;
    net_put16(r + 2, 0);
    net_put16(r + 4, s->id);
    net_put16(r + 6, seq);
    for (unsigned i = 0; i < len; i++)
        r[ICMP_HLEN + i] = (uint8_t)(0x10 + i);     /* like Linux ping's pattern */
    net_put16(r + 2, net_csum_fold(net_csum_add(0, r, ICMP_HLEN + len)));
    uint64_t start = n->nif->now_us(n->nif->ctx);
    s->sent_at = start;
    n->now = start;
    int r0 = ip_output(n, dst, IP_PROTO_ICMP, ICMP_HLEN + len);
    if (r0 < 0 && r0 != -NET_ENOBUFS)
        return r0;
    /* the first request to a new neighbour waits in ARP's queue: it goes
     * out when the reply comes, so one timeout covers both */
    while (!s->replied) {
        uint64_t t = n->nif->now_us(n->nif->ctx);
        if (t - start >= timeout_us)
            break;
        net_poll(n, timeout_us - (t - start));
    }
    s->sent_at = 0;
    if (!s->replied)
        return -NET_ETIMEDOUT;
    if (rtt_us)
        *rtt_us = s->rtt_us;
    if (ttl)
        *ttl = s->ttl;
    return 0;
}
