/* nc: a small netcat: send text to a TCP or UDP port, print what comes back.
 *
 *   nc [-u] [-w SECS] [-vf N] [-a ADDR/PREFIX] [-irq] ADDR PORT [TEXT...]
 *
 * With TEXT, sends the words (joined by blanks) and a newline; without, sends
 * the console's lines as they are typed (^D ends).  Then prints what the
 * other side sends, until it closes the connection (TCP) or nothing has come
 * for SECS seconds (default 2).  -u: UDP, one datagram per line.
 */
#include "xomb.h"
#include "net/nic_netif.h"

static struct net net;
static struct nic_netif nx;

/* Print what arrives until the peer closes or `idle_us` passes without data. */
static int tcp_print(struct tcp_conn *c, uint64_t idle_us)
{
    static char buf[1024];
    for (;;) {
        int r = tcp_recv_wait(&net, c, buf, sizeof(buf), idle_us);
        if (r > 0) {
            console_write(buf, (size_t)r);
            continue;
        }
        if (r == 0 || r == -NET_ETIMEDOUT)
            return 0;
        printf("nc: %s\n", net_strerror(r));
        return 1;
    }
}

static int udp_print(struct udp_sock *s, uint64_t idle_us)
{
    static char buf[UDP_MAX_PAYLOAD];
    int r;
    while ((r = udp_recvfrom(&net, s, buf, sizeof(buf), 0, 0, idle_us)) >= 0)
        console_write(buf, (size_t)r);
    return 0;
}

int main(int argc, char **argv)
{
    struct net_opts o = {0};
    int use_udp = 0, i;
    uint64_t wait_s = 2;
    for (i = 1; i < argc && argv[i][0] == '-'; i++) {
        if (net_opt(&o, argc, argv, &i))
            continue;
        if (!strcmp(argv[i], "-u"))
            use_udp = 1;
        else if (!strcmp(argv[i], "-w") && i + 1 < argc)
            wait_s = strtoul(argv[++i], 0, 0);
        else
            break;
    }
    uint32_t dst;
    unsigned long port = i + 1 < argc ? strtoul(argv[i + 1], 0, 0) : 0;
    if (i + 1 >= argc || ip_parse(argv[i], &dst) < 0 || !port || port > 65535) {
        puts("usage: nc [-u] [-w SECS] [-vf N] [-a ADDR/PREFIX] [-irq] ADDR PORT [TEXT...]");
        return 2;
    }
    static char text[1024];
    size_t n = 0;
    for (int k = i + 2; k < argc; k++) {
        size_t len = strlen(argv[k]);
        if (n + len + 2 > sizeof(text))
            break;
        memcpy(text + n, argv[k], len);
        n += len;
        text[n++] = k + 1 < argc ? ' ' : '\n';
    }
    int interactive = i + 2 >= argc;
    if (net_start(&net, &nx, &o, "nc") < 0)
        return 2;
    uint64_t idle = wait_s * 1000000ULL;
    int status = 0;
    if (use_udp) {
        struct udp_sock *s = udp_bind(&net, 0);
        if (!s) {
            puts("nc: no UDP socket");
            return 1;
        }
        if (!interactive) {
            udp_sendto(&net, s, dst, (uint16_t)port, text, (unsigned)n);
            status = udp_print(s, idle);
        }
        while (interactive) {
            int len = readline(text, sizeof(text) - 1);
            if (len < 0)
                break;
            putchar('\n');
            text[len] = '\n';
            udp_sendto(&net, s, dst, (uint16_t)port, text, (unsigned)len + 1);
            udp_print(s, 500000);
        }
        udp_close(&net, s);
    } else {
        struct tcp_conn *c;
        int r = tcp_connect(&net, dst, (uint16_t)port, &c, 10000000);
        if (r < 0) {
            printf("nc: %s:%lu: %s\n", argv[i], port, net_strerror(r));
            nic_netif_close(&nx);
            return 1;
        }
        if (!interactive) {
            r = tcp_send_all(&net, c, text, (unsigned)n, 10000000);
        }
        while (interactive && r >= 0) {
            int len = readline(text, sizeof(text) - 1);
            if (len < 0)
                break;
            putchar('\n');
            text[len] = '\n';
            r = tcp_send_all(&net, c, text, (unsigned)len + 1, 10000000);
            if (r >= 0)
                r = tcp_recv_wait(&net, c, text, sizeof(text), 500000);
            if (r > 0)
                console_write(text, (size_t)r);
            if (r == -NET_ETIMEDOUT)
                r = 0;
        }
        if (r < 0 && r != -NET_ETIMEDOUT) {
            printf("nc: %s\n", net_strerror(r));
            status = 1;
        } else {
            status = tcp_print(c, idle);
        }
        tcp_close(&net, c);
        net_drain(&net, 2000000);
    }
    nic_netif_close(&nx);
    return status;
}
