/* nethost: the libOS network stack (libos/lib/net/) on a Linux TAP device.
 *
 * The same C files the guest links, compiled with the host's gcc, with a
 * netif made of a TAP file descriptor: so real ping, curl and Python clients
 * can test the stack without KVM (tests/test_netstack_host.py).
 *
 *   nethost --tap NAME [--ip 10.0.2.15/24] [--gw 10.0.2.1] [--www DIR]
 *           [--seconds N] [--loss PERCENT]
 *
 * Serves until SIGTERM/SIGINT (or N seconds): answers ARP and ping, echoes
 * UDP port 7 and TCP port 7, serves the files of DIR (read into memory at
 * start) over HTTP on port 80 with http.c.  Prints "nethost: ready" once
 * the TAP is up, and its counters when it stops.  --loss drops that share
 * of the frames in each direction (a fixed pseudo-random sequence), to make
 * TCP retransmit where the kernel has no netem.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "net/net.h"

static volatile sig_atomic_t stop, dump;
static void on_signal(int s) { (void)s; stop = 1; }
static void on_usr1(int s) { (void)s; dump = 1; }

/* SIGUSR1: print the connection table, like netstat. */
static void print_conns(struct net *n)
{
    char ip[16];
    for (int i = 0; i < TCP_CONNS; i++) {
        struct tcp_conn *c = &n->tcp[i];
        if (c->state == TCP_FREE)
            continue;
        printf("nethost: tcp %d %s :%u -> %s:%u una %u nxt %u max %u wnd %u sndq %u rcvq %u "
               "accepted %d closed %d retries %u rto %u\n", i, tcp_state_name(c->state),
               c->lport, ip_format(c->rip, ip), c->rport, c->snd_una - c->iss,
               c->snd_nxt - c->iss, c->snd_max - c->iss, c->snd_wnd, c->snd_len, c->rcv_len,
               c->accepted, c->closed, c->retries, c->rto_us);
    }
    fflush(stdout);
}

/* ---- the netif: a TAP file descriptor ------------------------------------- */

static unsigned loss_pct;
static uint64_t loss_state = 0x2545F4914F6CDD1DULL;
static uint64_t lost_frames;

static int lose(void)
{
    if (!loss_pct)
        return 0;
    loss_state ^= loss_state << 13;
    loss_state ^= loss_state >> 7;
    loss_state ^= loss_state << 17;
    if (loss_state % 100 >= loss_pct)
        return 0;
    lost_frames++;
    return 1;
}

static int tap_send(void *ctx, const void *frame, unsigned len)
{
    if (lose())
        return 0;                       /* "sent", and lost on the wire */
    return write(*(int *)ctx, frame, len) == (ssize_t)len ? 0 : -1;
}

static int tap_recv(void *ctx, void *buf, unsigned cap)
{
    ssize_t r;
    while ((r = read(*(int *)ctx, buf, cap)) > 0 && lose())
        ;                               /* lost on the wire */
    return r > 0 ? (int)r : 0;
}

static void tap_wait(void *ctx, uint64_t timeout_us)
{
    struct pollfd p = {.fd = *(int *)ctx, .events = POLLIN};
    poll(&p, 1, (int)((timeout_us + 999) / 1000));
}

static uint64_t host_now_us(void *ctx)
{
    (void)ctx;
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000 + (uint64_t)t.tv_nsec / 1000;
}

static int tap_open(const char *name, uint8_t mac[6])
{
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK);
    if (fd < 0) {
        perror("nethost: /dev/net/tun");
        return -1;
    }
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        perror("nethost: TUNSETIFF");
        return -1;
    }
    /* our MAC is the stack's own, not the TAP's (which is the host side's) */
    mac[0] = 0x52;
    mac[1] = 0x54;
    mac[2] = 0x00;
    if (getrandom(mac + 3, 3, 0) != 3)
        mac[5] = 0x42;
    return fd;
}

/* ---- files served over HTTP ------------------------------------------------ */

#define MAX_FILES 64
static struct { char path[260]; uint8_t *data; uint64_t len; } files[MAX_FILES];
static int nfiles;

static void load_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)) && nfiles < MAX_FILES) {
        char p[4096];
        struct stat st;
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        if (stat(p, &st) < 0 || !S_ISREG(st.st_mode))
            continue;
        FILE *f = fopen(p, "rb");
        if (!f)
            continue;
        files[nfiles].data = malloc(st.st_size ? st.st_size : 1);
        files[nfiles].len = fread(files[nfiles].data, 1, st.st_size, f);
        snprintf(files[nfiles].path, sizeof(files[nfiles].path), "/%s", e->d_name);
        fclose(f);
        nfiles++;
    }
    if (d)
        closedir(d);
}

static int lookup(const char *path, const void **data, uint64_t *len, void *ctx)
{
    (void)ctx;
    for (int i = 0; i < nfiles; i++)
        if (!strcmp(files[i].path, path)) {
            *data = files[i].data;
            *len = files[i].len;
            return 0;
        }
    return -1;
}

/* ---- TCP echo: a connection table served round robin ------------------------ */

#define ECHO_MAX 4
static struct tcp_conn *echo[ECHO_MAX];

static void echo_service(struct net *n)
{
    static uint8_t buf[TCP_SNDBUF];
    for (int i = 0; i < ECHO_MAX; i++) {
        struct tcp_conn *c = echo[i];
        if (!c)
            continue;
        /* read only what we can send back at once: no buffer of our own */
        unsigned room = TCP_SNDBUF - c->snd_len;
        int r = room ? tcp_recv(n, c, buf, room) : -NET_EAGAIN;
        if (r > 0) {
            tcp_send(n, c, buf, (unsigned)r);
        } else if (r == 0 || (r < 0 && r != -NET_EAGAIN)) {
            printf("nethost: echo %d ends (%s, %s)\n", i, r ? net_strerror(r) : "end of stream",
                   tcp_state_name(c->state));
            fflush(stdout);
            tcp_close(n, c);            /* the peer finished (or died) */
            echo[i] = 0;
        }
    }
}

int main(int argc, char **argv)
{
    const char *tap = 0, *www = 0, *cidr = "10.0.2.15/24", *gw = "10.0.2.1";
    long seconds = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tap") && i + 1 < argc)
            tap = argv[++i];
        else if (!strcmp(argv[i], "--ip") && i + 1 < argc)
            cidr = argv[++i];
        else if (!strcmp(argv[i], "--gw") && i + 1 < argc)
            gw = argv[++i];
        else if (!strcmp(argv[i], "--www") && i + 1 < argc)
            www = argv[++i];
        else if (!strcmp(argv[i], "--loss") && i + 1 < argc)
            loss_pct = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            seconds = atol(argv[++i]);
        else
            tap = 0, i = argc;
    }
    if (!tap) {
        fprintf(stderr, "usage: nethost --tap NAME [--ip A/P] [--gw G] [--www DIR] "
                        "[--seconds N] [--loss PCT]\n");
        return 2;
    }
    static int fd;
    static struct netif nif;
    static struct net net;
    if ((fd = tap_open(tap, nif.mac)) < 0)
        return 2;
    if (ip_parse_cidr(cidr, &nif.ip, &nif.prefix) < 0 || ip_parse(gw, &nif.gateway) < 0) {
        fprintf(stderr, "nethost: bad address\n");
        return 2;
    }
    if (www)
        load_dir(www);
    nif.ctx = &fd;
    nif.send = tap_send;
    nif.recv = tap_recv;
    nif.wait = tap_wait;
    nif.now_us = host_now_us;
    if (getrandom(&nif.seed, sizeof(nif.seed), 0) != sizeof(nif.seed))
        nif.seed = host_now_us(0);
    net_init(&net, &nif);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGUSR1, on_usr1);

    struct udp_sock *u = udp_bind(&net, 7);
    struct tcp_conn *echo_l = tcp_listen(&net, 7, 4);
    struct tcp_conn *http_l = tcp_listen(&net, 80, 4);
    if (!u || !echo_l || !http_l) {
        fprintf(stderr, "nethost: cannot bind\n");
        return 1;
    }
    char ip[16];
    printf("nethost: ready on %s %s/%u, %d files\n", tap, ip_format(nif.ip, ip), nif.prefix,
           nfiles);
    fflush(stdout);
    uint64_t end = seconds ? host_now_us(0) + (uint64_t)seconds * 1000000 : 0;
    uint64_t http_served = 0, udp_echoed = 0;
    while (!stop && (!end || host_now_us(0) < end)) {
        net_poll(&net, 20000);
        if (dump) {
            dump = 0;
            print_conns(&net);
        }
        static uint8_t dg[UDP_MAX_PAYLOAD];
        uint32_t from;
        uint16_t port;
        int k;
        while ((k = udp_recvfrom(&net, u, dg, sizeof(dg), &from, &port, 0)) >= 0) {
            udp_sendto(&net, u, from, port, dg, (unsigned)k);
            udp_echoed++;
        }
        struct tcp_conn *c;
        while (tcp_accept(&net, echo_l, &c, 0) == 0) {
            int slot = -1;
            for (int i = 0; i < ECHO_MAX; i++)
                if (!echo[i])
                    slot = i;
            if (slot < 0)
                tcp_abort(&net, c);
            else
                echo[slot] = c;
        }
        echo_service(&net);
        if (tcp_accept(&net, http_l, &c, 0) == 0) {
            int st = http_serve(&net, c, lookup, 0, 0, 5000000);
            printf("nethost: http %d\n", st);
            fflush(stdout);
            http_served++;
        }
    }
    net_drain(&net, 1000000);
    struct net_stats *s = &net.stats;
    printf("nethost: stop: rx %lu tx %lu http %lu udp %lu; dropped runt %lu bad_ip %lu "
           "ip_csum %lu lost %lu fragment %lu bad_tcp %lu bad_udp %lu bad_icmp %lu no_port %lu; "
           "tcp rst %lu retransmits %lu fast %lu out_of_order %lu out_of_window %lu\n",
           s->rx_frames, s->tx_frames, http_served, udp_echoed, s->drop_runt, s->drop_bad_ip,
           s->drop_ip_csum, lost_frames, s->drop_fragment, s->drop_bad_tcp, s->drop_bad_udp,
           s->drop_bad_icmp, s->drop_no_port, s->tcp_rst_sent, s->tcp_retransmits,
           s->tcp_fast_retransmits, s->tcp_out_of_order, s->tcp_out_of_window);
    return 0;
}
