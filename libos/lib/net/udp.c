/* UDP (RFC 768): datagrams, no connections, no guarantees.
 *
 *   | source port | destination port | length | checksum | data ... |
 *
 * Each bound socket owns a ring of UDP_QUEUE received datagrams; when it is
 * full, new datagrams are dropped (and counted), which is what UDP allows.
 * The checksum is optional in IPv4 (0 = none); we check it when present and
 * always send one.
 */
#include "net.h"
#include "string.h"

#define UDP_HLEN 8

static struct udp_sock *udp_find(struct net *n, uint16_t port)
{
    for (int i = 0; i < UDP_SOCKETS; i++)
        if (n->udp[i].port == port)
            return &n->udp[i];
    return 0;
}

void udp_input(struct net *n, const struct ip_info *ip, const uint8_t *p, unsigned len)
{
    if (len < UDP_HLEN) {
        n->stats.drop_bad_udp++;
        return;
    }
    unsigned ulen = net_get16(p + 4);
    if (ulen < UDP_HLEN || ulen > len) {
        n->stats.drop_bad_udp++;
        return;
    }
    if (net_get16(p + 6) != 0 &&
        net_csum_fold(net_csum_add(net_pseudo_sum(ip->src, ip->dst, IP_PROTO_UDP, ulen), p,
                                   ulen)) != 0) {
        n->stats.drop_bad_udp++;
        return;
    }
    uint16_t dport = net_get16(p + 2);
    struct udp_sock *s = dport ? udp_find(n, dport) : 0;
    if (!s) {
        n->stats.drop_no_port++;        /* a real host sends ICMP port unreachable */
        return;
    }
    if (s->count == UDP_QUEUE) {
        s->dropped++;
        return;
    }
    struct udp_dgram *d = &s->q[(s->head + s->count) % UDP_QUEUE];
    d->ip = ip->src;
    d->port = net_get16(p);
    d->len = (uint16_t)(ulen - UDP_HLEN);
    memcpy(d->data, p + UDP_HLEN, d->len);
    s->count++;
}

struct udp_sock *udp_bind(struct net *n, uint16_t port)
{
    if (!port) {
        for (int tries = 0; tries < 16384 && !port; tries++) {
            port = net_ephemeral_port(n);
            if (udp_find(n, port))
                port = 0;
        }
    } else if (udp_find(n, port)) {
        return 0;
    }
    struct udp_sock *s = udp_find(n, 0);
    if (!s || !port)
        return 0;
    memset(s, 0, sizeof(*s) - sizeof(s->q));
    s->port = port;
    return s;
}

void udp_close(struct net *n, struct udp_sock *s)
{
    if (s)
        s->port = 0;
}

int udp_sendto(struct net *n, struct udp_sock *s, uint32_t ip, uint16_t port, const void *buf,
               unsigned len)
{
    if (!s || !s->port || !port)
        return -NET_EINVAL;
    if (len > UDP_MAX_PAYLOAD)
        return -NET_EMSGSIZE;
    uint8_t *u = n->tx + NET_PAYLOAD;
    net_put16(u, s->port);
    net_put16(u + 2, port);
    net_put16(u + 4, (uint16_t)(UDP_HLEN + len));
    net_put16(u + 6, 0);
    memcpy(u + UDP_HLEN, buf, len);
    uint16_t c = net_csum_fold(net_csum_add(
        net_pseudo_sum(n->nif->ip, ip, IP_PROTO_UDP, UDP_HLEN + len), u, UDP_HLEN + len));
    net_put16(u + 6, c ? c : 0xffff);   /* 0 would mean "no checksum" */
    n->now = n->nif->now_us(n->nif->ctx);
    int r = ip_output(n, ip, IP_PROTO_UDP, UDP_HLEN + len);
    return r < 0 && r != -NET_ENOBUFS ? r : (int)len;
}

int udp_recvfrom(struct net *n, struct udp_sock *s, void *buf, unsigned cap, uint32_t *ip,
                 uint16_t *port, uint64_t timeout_us)
{
    if (!s || !s->port)
        return -NET_EINVAL;
    uint64_t start = n->nif->now_us(n->nif->ctx);
    while (!s->count) {
        uint64_t t = n->nif->now_us(n->nif->ctx);
        if (t - start >= timeout_us)
            return timeout_us ? -NET_ETIMEDOUT : -NET_EAGAIN;
        net_poll(n, timeout_us - (t - start));
    }
    struct udp_dgram *d = &s->q[s->head];
    unsigned k = d->len < cap ? d->len : cap;
    memcpy(buf, d->data, k);
    if (ip)
        *ip = d->ip;
    if (port)
        *port = d->port;
    s->head = (uint16_t)((s->head + 1) % UDP_QUEUE);
    s->count--;
    return (int)k;
}
