/* Ethernet II: 6 bytes destination, 6 bytes source, 2 bytes type, payload.
 *
 * The device strips the frame check sequence, so what we see is 14 bytes
 * of header and 46..1500 bytes of payload (short frames arrive padded with
 * zeros: the layers above trust their own length fields, not ours).
 */
#include "net.h"
#include "string.h"

const uint8_t eth_broadcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

void eth_input(struct net *n, const uint8_t *f, unsigned len)
{
    if (len < ETH_HLEN) {
        n->stats.drop_runt++;
        return;
    }
    if (len > NET_FRAME_MAX) {          /* a driver gave us more than a frame */
        n->stats.drop_runt++;
        return;
    }
    /* ours, or broadcast (ARP requests); other multicast is not for us */
    if (memcmp(f, n->nif->mac, 6) != 0 && memcmp(f, eth_broadcast, 6) != 0) {
        n->stats.drop_not_for_us++;
        return;
    }
    uint16_t type = net_get16(f + 12);
    if (type == ETH_TYPE_ARP)
        arp_input(n, f + ETH_HLEN, len - ETH_HLEN);
    else if (type == ETH_TYPE_IP)
        ip_input(n, f + ETH_HLEN, len - ETH_HLEN);
    else
        n->stats.drop_not_for_us++;     /* IPv6, VLAN tags, ... */
}

/* frame[ETH_HLEN ..] holds payload_len bytes: add the header and send. */
int eth_output(struct net *n, uint8_t *frame, const uint8_t dst[6], uint16_t type,
               unsigned payload_len)
{
    memcpy(frame, dst, 6);
    memcpy(frame + 6, n->nif->mac, 6);
    net_put16(frame + 12, type);
    unsigned len = ETH_HLEN + payload_len;
    while (len < 60)                    /* the minimum frame (64 with the FCS) */
        frame[len++] = 0;
    int r = n->nif->send(n->nif->ctx, frame, len);
    if (r < 0)
        n->stats.tx_errors++;
    else
        n->stats.tx_frames++;
    return r;
}
