/* ARP (RFC 826): which MAC address has this IPv4 address?
 *
 * A packet:  htype 1 (Ethernet) | ptype 0x0800 | hlen 6 | plen 4 | op
 *            sender MAC | sender IP | target MAC | target IP       (28 bytes)
 *
 * We answer requests for our own address, and we learn from every ARP
 * packet that targets us (the sender will talk to us next, so we will need
 * its MAC).  The cache holds ARP_CACHE_SIZE entries; a resolved entry is
 * trusted for ARP_TIMEOUT_US, then asked again.
 *
 * While a next hop is being resolved, ip_output() parks the finished frame
 * here (ARP_PENDING of them, all next hops together); the reply sends
 * them.  A frame that finds no parking slot is dropped: the protocol above
 * (TCP's retransmission, ping's next try) recovers.
 */
#include "net.h"
#include "string.h"

#define ARP_FREE 0
#define ARP_RESOLVING 1
#define ARP_RESOLVED 2
#define ARP_REQUEST 1
#define ARP_REPLY 2
#define ARP_LEN 28

static void arp_send(struct net *n, uint16_t op, const uint8_t dst_mac[6],
                     const uint8_t target_mac[6], uint32_t target_ip)
{
    uint8_t frame[64];      /* its own buffer: ip_output may be building in n->tx */
    uint8_t *p = frame + ETH_HLEN;
    net_put16(p, 1);
    net_put16(p + 2, ETH_TYPE_IP);
    p[4] = 6;
    p[5] = 4;
    net_put16(p + 6, op);
    memcpy(p + 8, n->nif->mac, 6);
    net_put32(p + 14, n->nif->ip);
    memcpy(p + 18, target_mac, 6);
    net_put32(p + 24, target_ip);
    eth_output(n, frame, dst_mac, ETH_TYPE_ARP, ARP_LEN);
}

static struct arp_entry *arp_find(struct net *n, uint32_t ip)
{
    for (int i = 0; i < ARP_CACHE_SIZE; i++)
        if (n->arp[i].state != ARP_FREE && n->arp[i].ip == ip)
            return &n->arp[i];
    return 0;
}

/* A slot for ip: a free one, else the oldest (least recently stamped). */
static struct arp_entry *arp_slot(struct net *n, uint32_t ip)
{
    struct arp_entry *e = arp_find(n, ip), *oldest = &n->arp[0];
    if (e)
        return e;
    for (int i = 0; i < ARP_CACHE_SIZE; i++) {
        if (n->arp[i].state == ARP_FREE)
            return &n->arp[i];
        if (n->arp[i].stamp < oldest->stamp)
            oldest = &n->arp[i];
    }
    return oldest;
}

/* Send the frames that waited for ip's MAC. */
static void arp_release(struct net *n, uint32_t ip, const uint8_t mac[6])
{
    for (int i = 0; i < ARP_PENDING; i++) {
        struct arp_pending *q = &n->pending[i];
        if (q->len && q->next_hop == ip) {
            memcpy(q->frame, mac, 6);
            if (n->nif->send(n->nif->ctx, q->frame, q->len) < 0)
                n->stats.tx_errors++;
            else
                n->stats.tx_frames++;
            q->len = 0;
        }
    }
}

void arp_input(struct net *n, const uint8_t *p, unsigned len)
{
    if (len < ARP_LEN || net_get16(p) != 1 || net_get16(p + 2) != ETH_TYPE_IP || p[4] != 6 ||
        p[5] != 4) {
        n->stats.drop_runt++;
        return;
    }
    uint16_t op = net_get16(p + 6);
    const uint8_t *sha = p + 8;
    uint32_t spa = net_get32(p + 14), tpa = net_get32(p + 24);
    if (tpa != n->nif->ip || spa == 0 || (sha[0] & 1)) {
        n->stats.drop_not_for_us++;     /* not ours; probes and multicast senders */
        return;
    }
    struct arp_entry *e = arp_slot(n, spa);
    e->ip = spa;
    memcpy(e->mac, sha, 6);
    e->state = ARP_RESOLVED;
    e->stamp = n->now;
    arp_release(n, spa, sha);
    if (op == ARP_REQUEST)
        arp_send(n, ARP_REPLY, sha, sha, spa);
}

int arp_resolve(struct net *n, uint32_t ip, uint8_t mac[6])
{
    struct arp_entry *e = arp_find(n, ip);
    if (e && e->state == ARP_RESOLVED && n->now - e->stamp < ARP_TIMEOUT_US) {
        memcpy(mac, e->mac, 6);
        return 1;
    }
    if (e && e->state == ARP_RESOLVING && n->now - e->stamp < ARP_RETRY_US)
        return 0;                       /* asked recently: wait for the answer */
    e = arp_slot(n, ip);
    e->ip = ip;
    e->state = ARP_RESOLVING;
    e->stamp = n->now;
    static const uint8_t zero[6];
    arp_send(n, ARP_REQUEST, eth_broadcast, zero, ip);
    return 0;
}

int arp_hold(struct net *n, uint32_t next_hop, const uint8_t *frame, unsigned len)
{
    for (int i = 0; i < ARP_PENDING; i++) {
        struct arp_pending *q = &n->pending[i];
        if (!q->len) {
            memcpy(q->frame, frame, len);
            q->len = len;
            q->next_hop = next_hop;
            return 0;
        }
    }
    n->stats.drop_arp_full++;
    return -NET_ENOBUFS;
}

/* Frames whose next hop never answered are dropped after a few retries. */
void arp_timer(struct net *n)
{
    for (int i = 0; i < ARP_PENDING; i++) {
        struct arp_pending *q = &n->pending[i];
        if (!q->len)
            continue;
        struct arp_entry *e = arp_find(n, q->next_hop);
        if (!e) {
            q->len = 0;                 /* its entry was recycled: give up */
            continue;
        }
        if (e->state == ARP_RESOLVING && n->now - e->stamp >= ARP_RETRY_US) {
            q->len = 0;                 /* one retry interval without an answer */
            e->state = ARP_FREE;
        }
    }
}
