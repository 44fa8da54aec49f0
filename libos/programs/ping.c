/* ping: ICMP echo requests to an address, the round trip of each (like Linux ping).
 *
 *   ping [-c COUNT] [-s SIZE] [-i MS] [-W SECS] [-vf N] [-a ADDR/PREFIX] [-irq] ADDR
 *
 * COUNT requests (default 4), SIZE bytes of payload (56), one every MS
 * milliseconds (1000), each waiting up to SECS seconds (1) for its reply.
 * Exits 0 if any reply came back.  While it waits it keeps the stack going,
 * so it answers pings and ARP itself.
 */
#include "xomb.h"
#include "net/nic_netif.h"

static struct net net;
static struct nic_netif nx;

int main(int argc, char **argv)
{
    struct net_opts o = {0};
    unsigned count = 4, size = 56, interval_ms = 1000, wait_s = 1;
    const char *target = 0;
    for (int i = 1; i < argc; i++) {
        if (net_opt(&o, argc, argv, &i))
            continue;
        if (!strcmp(argv[i], "-c") && i + 1 < argc)
            count = (unsigned)strtoul(argv[++i], 0, 0);
        else if (!strcmp(argv[i], "-s") && i + 1 < argc)
            size = (unsigned)strtoul(argv[++i], 0, 0);
        else if (!strcmp(argv[i], "-i") && i + 1 < argc)
            interval_ms = (unsigned)strtoul(argv[++i], 0, 0);
        else if (!strcmp(argv[i], "-W") && i + 1 < argc)
            wait_s = (unsigned)strtoul(argv[++i], 0, 0);
        else if (argv[i][0] != '-' && !target)
            target = argv[i];
        else
            target = 0, i = argc;
    }
    uint32_t dst;
    if (!target || ip_parse(target, &dst) < 0) {
        puts("usage: ping [-c COUNT] [-s SIZE] [-i MS] [-W SECS] [-vf N] [-a ADDR/PREFIX] [-irq] "
             "ADDR");
        return 2;
    }
    if (size > NET_MTU - 28) {
        printf("ping: size %u: at most %u\n", size, NET_MTU - 28);
        return 2;
    }
    if (net_start(&net, &nx, &o, "ping") < 0)
        return 2;
    printf("PING %s (%s) %u(%u) bytes of data.\n", target, target, size, size + 28);
    unsigned received = 0;
    uint64_t min = ~0ULL, max = 0, sum = 0, start = time_us();
    for (unsigned seq = 1; seq <= count; seq++) {
        uint64_t t0 = time_us(), rtt;
        uint8_t ttl;
        int r = icmp_ping(&net, dst, (uint16_t)seq, size, wait_s * 1000000ULL, &rtt, &ttl);
        if (r == 0) {
            received++;
            sum += rtt;
            min = rtt < min ? rtt : min;
            max = rtt > max ? rtt : max;
            printf("%u bytes from %s: icmp_seq=%u ttl=%u time=%lu.%03lu ms\n", size + 8, target,
                   seq, ttl, rtt / 1000, rtt % 1000);
        } else {
            printf("no reply from %s: icmp_seq=%u (%s)\n", target, seq, net_strerror(r));
        }
        while (seq < count && time_us() - t0 < interval_ms * 1000ULL)
            net_poll(&net, interval_ms * 1000ULL - (time_us() - t0));
    }
    uint64_t total_ms = (time_us() - start) / 1000;
    printf("\n--- %s ping statistics ---\n", target);
    printf("%u packets transmitted, %u received, %u%% packet loss, time %lums\n", count, received,
           count ? (count - received) * 100 / count : 0, total_ms);
    if (received) {
        uint64_t avg = sum / received;
        printf("rtt min/avg/max = %lu.%03lu/%lu.%03lu/%lu.%03lu ms\n", min / 1000, min % 1000,
               avg / 1000, avg % 1000, max / 1000, max % 1000);
    }
    nic_netif_close(&nx);
    return received ? 0 : 1;
}
