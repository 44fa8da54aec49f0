/* udpecho: a UDP echo server (RFC 862): every datagram goes back to its sender.
 *
 *   udpecho [-p PORT] [-n COUNT] [-t] [-vf N] [-a ADDR/PREFIX] [-irq] [-- PROGRAM ARGS...]
 *
 * Port 7 by default.  Prints "udpecho: listening on ADDR:PORT" when ready and
 * serves until COUNT datagrams are echoed (default: forever, until ^C).
 * -t: echo TCP connections on the same port as well (RFC 862 has both), up
 * to ECHO_CONNS at once, each until its client closes.
 *
 * With "-- PROGRAM ARGS...", it runs PROGRAM as its child with the NIC VFs it
 * does not use itself, and serves while the child runs (at every timer tick
 * that preempts the child, the CPU comes back to us: we answer what arrived
 * and resume the child), until the child exits.  Two address spaces, two
 * VFs, talking through the NIC's switch:
 *     udpecho -vf 1 -a 10.0.2.16/24 -- nc -u 10.0.2.16 7 hello
 */
#include "xomb.h"
#include "net/nic_netif.h"

static struct net net;
static struct nic_netif nx;
static struct udp_sock *sock;
static uint64_t echoed, limit, tcp_bytes;
static struct tcp_conn *listener;
#define ECHO_CONNS 4
static struct tcp_conn *conns[ECHO_CONNS];

/* TCP echo, without waiting and without a buffer of our own: read only as
 * much as the send buffer can take back at once. */
static void serve_tcp(void)
{
    static uint8_t buf[TCP_SNDBUF];
    struct tcp_conn *c;
    while (listener && tcp_accept(&net, listener, &c, 0) == 0) {
        int slot = -1;
        for (int i = 0; i < ECHO_CONNS; i++)
            if (!conns[i])
                slot = i;
        if (slot < 0)
            tcp_abort(&net, c);         /* too many at once */
        else
            conns[slot] = c;
    }
    for (int i = 0; i < ECHO_CONNS; i++) {
        if (!(c = conns[i]))
            continue;
        unsigned room = TCP_SNDBUF - c->snd_len;
        int r = room ? tcp_recv(&net, c, buf, room) : -NET_EAGAIN;
        if (r > 0) {
            tcp_send(&net, c, buf, (unsigned)r);
            tcp_bytes += (unsigned)r;
        } else if (r != -NET_EAGAIN) {  /* the client is done (or gone) */
            tcp_close(&net, c);
            conns[i] = 0;
        }
    }
}

/* Echo what has arrived; never waits. */
static void serve(void)
{
    static uint8_t buf[UDP_MAX_PAYLOAD];
    uint32_t ip;
    uint16_t port;
    int k;
    while ((!limit || echoed < limit) &&
           (k = udp_recvfrom(&net, sock, buf, sizeof(buf), &ip, &port, 0)) >= 0) {
        udp_sendto(&net, sock, ip, port, buf, (unsigned)k);
        echoed++;
    }
}

/* A tick preempted our child: the network's turn. */
static int on_tick(void)
{
    net_poll(&net, 0);
    serve();
    serve_tcp();
    return 0;                           /* never kill the child */
}

static int run_child(char **argv, unsigned our_vf)
{
    long h = spawn(argv[0], argv);
    if (h < 0) {
        printf("udpecho: cannot run %s: %s\n", argv[0], spawn_error());
        return 1;
    }
    for (unsigned vf = 0; vf < XOMB_NIC_MAX_VFS; vf++)
        if (vf != our_vf && nic_holds(vf))
            nic_grant(h, vf);
    process_interrupt_check = on_tick;
    int st = wait_status(h, 0, 0);
    process_interrupt_check = 0;
    nic_take_back(h);
    proc_destroy(h);
    printf("udpecho: %s exited with %d; echoed %lu datagrams, %lu TCP bytes\n", argv[0], st,
           echoed, tcp_bytes);
    return st;
}

int main(int argc, char **argv)
{
    struct net_opts o = {0};
    unsigned port = 7;
    char **child = 0;
    int tcp = 0;
    for (int i = 1; i < argc; i++) {
        if (net_opt(&o, argc, argv, &i))
            continue;
        if (!strcmp(argv[i], "-p") && i + 1 < argc) {
            port = (unsigned)strtoul(argv[++i], 0, 0);
        } else if (!strcmp(argv[i], "-n") && i + 1 < argc) {
            limit = strtoul(argv[++i], 0, 0);
        } else if (!strcmp(argv[i], "-t")) {
            tcp = 1;
        } else if (!strcmp(argv[i], "--") && i + 1 < argc) {
            child = argv + i + 1;
            break;
        } else {
            puts("usage: udpecho [-p PORT] [-n COUNT] [-t] [-vf N] [-a ADDR/PREFIX] [-irq]\n"
                 "               [-- PROGRAM ARGS]");
            return 2;
        }
    }
    if (!port || port > 65535) {
        puts("udpecho: bad port");
        return 2;
    }
    if (net_start(&net, &nx, &o, "udpecho") < 0)
        return 2;
    sock = udp_bind(&net, (uint16_t)port);
    if (!sock) {
        printf("udpecho: port %u: %s\n", port, net_strerror(NET_EADDRINUSE));
        return 1;
    }
    if (tcp && !(listener = tcp_listen(&net, (uint16_t)port, ECHO_CONNS))) {
        printf("udpecho: TCP port %u: %s\n", port, net_strerror(NET_EADDRINUSE));
        return 1;
    }
    char ip[16];
    printf("udpecho: listening on %s:%u%s\n", ip_format(net.nif->ip, ip), port,
           tcp ? " (UDP and TCP)" : "");
    int status = 0;
    if (child) {
        status = run_child(child, o.vf);
    } else {
        while (!limit || echoed < limit) {
            net_poll(&net, 100000);
            serve();
            serve_tcp();
            if (console_take_interrupt())
                break;
        }
        printf("udpecho: echoed %lu datagrams, %lu TCP bytes\n", echoed, tcp_bytes);
    }
    udp_close(&net, sock);
    for (int i = 0; i < ECHO_CONNS; i++)
        if (conns[i])
            tcp_close(&net, conns[i]);
    if (listener)
        tcp_close(&net, listener);
    net_drain(&net, 2000000);
    nic_netif_close(&nx);
    return status;
}
