/* IPv4 (RFC 791) and the Internet checksum (RFC 1071).
 *
 *  0      4      8              16     19                     31
 *  | ver  | IHL  |     TOS      |        total length          |
 *  |       identification       | flags|   fragment offset     |
 *  |    TTL      |   protocol   |      header checksum         |
 *  |                       source address                      |
 *  |                    destination address                    |
 *  |               options (IHL > 5), rarely                   |
 *
 * Input: every field is checked before it is believed (length, IHL,
 * checksum); options are skipped (IHL says how long the header is);
 * fragments are dropped (we never send packets bigger than the MTU, so a
 * peer that fragments is unusual: a teaching stack may decline them).
 * We are a host, not a router: packets for other addresses are dropped, and
 * TTL matters only on output (64).
 */
#include "net.h"
#include "string.h"

#define IP_TTL 64
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

/* The ones' complement sum of 16-bit big-endian words; odd bytes padded. */
uint32_t net_csum_add(uint32_t sum, const void *data, unsigned len)
{
    const uint8_t *p = data;
    uint64_t s = sum;
    while (len >= 2) {
        s += (uint32_t)(p[0] << 8 | p[1]);
        p += 2;
        len -= 2;
    }
    if (len)
        s += (uint32_t)p[0] << 8;
    while (s >> 32)
        s = (s & 0xffffffff) + (s >> 32);
    return (uint32_t)s;
}

uint16_t net_csum_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* TCP and UDP checksums also cover a pseudo header from the IP layer. */
uint32_t net_pseudo_sum(uint32_t src, uint32_t dst, uint8_t proto, unsigned len)
{
    uint32_t s = (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff);
    return s + proto + len;
}

void ip_input(struct net *n, const uint8_t *p, unsigned len)
{
    if (len < IP_HLEN || (p[0] >> 4) != 4) {
        n->stats.drop_bad_ip++;
        return;
    }
    unsigned hlen = (unsigned)(p[0] & 0xf) * 4;
    unsigned total = net_get16(p + 2);
    if (hlen < IP_HLEN || hlen > len || total < hlen || total > len) {
        n->stats.drop_bad_ip++;
        return;
    }
    if (net_csum_fold(net_csum_add(0, p, hlen)) != 0) {
        n->stats.drop_ip_csum++;
        return;
    }
    uint16_t frag = net_get16(p + 6);
    if (frag & (IP_MF | IP_OFFSET)) {
        n->stats.drop_fragment++;
        return;
    }
    struct ip_info info = {
        .src = net_get32(p + 12), .dst = net_get32(p + 16), .ttl = p[8], .proto = p[9],
    };
    uint32_t me = n->nif->ip, bcast = me | ~n->netmask;
    if (info.dst != me && info.dst != 0xffffffffu && info.dst != bcast) {
        n->stats.drop_not_for_us++;
        return;
    }
    /* a source that is broadcast or multicast is a lie: never answer it */
    if (info.src == 0xffffffffu || info.src == bcast || (info.src >> 28) == 0xe) {
        n->stats.drop_bad_ip++;
        return;
    }
    const uint8_t *payload = p + hlen;
    unsigned plen = total - hlen;       /* the frame may carry Ethernet padding */
    switch (info.proto) {
    case IP_PROTO_ICMP: icmp_input(n, &info, payload, plen); break;
    case IP_PROTO_UDP: udp_input(n, &info, payload, plen); break;
    case IP_PROTO_TCP:
        if (info.dst == me)             /* no TCP to broadcast addresses */
            tcp_input(n, &info, payload, plen);
        break;
    default: n->stats.drop_no_port++; break;
    }
}

/* The transport built its packet at n->tx + NET_PAYLOAD; add the IP header
 * and the Ethernet header and send it (or park it until ARP answers). */
int ip_output(struct net *n, uint32_t dst, uint8_t proto, unsigned len)
{
    if (len > NET_MTU - IP_HLEN)
        return -NET_EMSGSIZE;
    uint8_t *ip = n->tx + ETH_HLEN;
    ip[0] = 0x45;                       /* version 4, 5 words of header */
    ip[1] = 0;
    net_put16(ip + 2, (uint16_t)(IP_HLEN + len));
    net_put16(ip + 4, n->ip_id++);
    net_put16(ip + 6, 0x4000);          /* don't fragment */
    ip[8] = IP_TTL;
    ip[9] = proto;
    net_put16(ip + 10, 0);
    net_put32(ip + 12, n->nif->ip);
    net_put32(ip + 16, dst);
    net_put16(ip + 10, net_csum_fold(net_csum_add(0, ip, IP_HLEN)));

    uint8_t mac[6];
    uint32_t bcast = n->nif->ip | ~n->netmask;
    if (dst == 0xffffffffu || dst == bcast)
        return eth_output(n, n->tx, eth_broadcast, ETH_TYPE_IP, IP_HLEN + len);
    /* on our subnet we talk to dst directly, elsewhere to the gateway */
    uint32_t next_hop = (dst & n->netmask) == (n->nif->ip & n->netmask) ? dst : n->nif->gateway;
    if (arp_resolve(n, next_hop, mac))
        return eth_output(n, n->tx, mac, ETH_TYPE_IP, IP_HLEN + len);
    /* build the frame now (destination MAC filled in when ARP answers) */
    static const uint8_t unknown[6];
    memcpy(n->tx, unknown, 6);
    memcpy(n->tx + 6, n->nif->mac, 6);
    net_put16(n->tx + 12, ETH_TYPE_IP);
    unsigned flen = ETH_HLEN + IP_HLEN + len;
    while (flen < 60)
        n->tx[flen++] = 0;
    return arp_hold(n, next_hop, n->tx, flen);
}
