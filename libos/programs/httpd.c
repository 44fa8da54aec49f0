/* httpd: serve the files of the disk's file system over HTTP/1.0.
 *
 *   httpd [-p PORT] [-n REQUESTS] [-vf N] [-a ADDR/PREFIX] [-irq]
 *
 * Port 80 by default.  GET /path answers with the file (200), 404 if there
 * is none, 400 for a request it does not understand (net/http.c).  The file
 * system is the one on the disk VF the shell lends us (xomb-vmm fs IMAGE
 * --ns 1 put ... puts files there).  Each file is mapped as a memory region
 * (XOmB style, like xsh's cat) while it is sent.  Prints "httpd: listening
 * on ADDR:PORT" when ready; serves REQUESTS connections (default: until ^C),
 * one at a time.
 */
#include "xomb.h"
#include "net/nic_netif.h"

#define FILE_VA 0x3200000000UL          /* where a file being served is mapped */
#define REQUEST_TIMEOUT_US 10000000ULL

static struct net net;
static struct nic_netif nx;
static uint64_t mapped_pages;

static int lookup(const char *path, const void **data, uint64_t *len, void *ctx)
{
    int ino = fs_lookup(path);
    if (ino < 0 || fs_inode(ino)->type == XOMB_FS_DIR)
        return -1;
    uint64_t size = fs_inode(ino)->size;
    if (size == 0) {
        static const char none[1];
        *data = none;
        *len = 0;
        mapped_pages = 0;
        return 0;
    }
    long r = fs_map(path, FILE_VA, &mapped_pages);
    if (r < 0)
        return -1;
    *data = (const void *)FILE_VA;
    *len = (uint64_t)r;
    return 0;
}

static void release(const void *data, uint64_t len, void *ctx)
{
    if (mapped_pages)
        page_free_range(FILE_VA, mapped_pages);
    mapped_pages = 0;
}

int main(int argc, char **argv)
{
    struct net_opts o = {0};
    unsigned port = 80;
    uint64_t limit = 0, served = 0;
    for (int i = 1; i < argc; i++) {
        if (net_opt(&o, argc, argv, &i))
            continue;
        if (!strcmp(argv[i], "-p") && i + 1 < argc) {
            port = (unsigned)strtoul(argv[++i], 0, 0);
        } else if (!strcmp(argv[i], "-n") && i + 1 < argc) {
            limit = strtoul(argv[++i], 0, 0);
        } else {
            puts("usage: httpd [-p PORT] [-n REQUESTS] [-vf N] [-a ADDR/PREFIX] [-irq]");
            return 2;
        }
    }
    if (!port || port > 65535) {
        puts("httpd: bad port");
        return 2;
    }
    if (fsh_init(1) < 0) {
        puts("httpd: no file system on our disk VF (boot with --disk IMAGE, xomb-vmm mkfs)");
        return 2;
    }
    if (net_start(&net, &nx, &o, "httpd") < 0)
        return 2;
    struct tcp_conn *l = tcp_listen(&net, (uint16_t)port, 4);
    if (!l) {
        printf("httpd: port %u: %s\n", port, net_strerror(NET_EADDRINUSE));
        return 1;
    }
    char ip[16];
    printf("httpd: listening on %s:%u\n", ip_format(net.nif->ip, ip), port);
    while (!limit || served < limit) {
        struct tcp_conn *c;
        if (tcp_accept(&net, l, &c, 100000) < 0) {
            if (console_take_interrupt())
                break;
            continue;
        }
        char peer[16];
        ip_format(c->rip, peer);
        int st = http_serve(&net, c, lookup, release, 0, REQUEST_TIMEOUT_US);
        if (st < 0)
            printf("httpd: %s: %s\n", peer, net_strerror(st));
        else
            printf("httpd: %s: %d\n", peer, st);
        served++;
    }
    tcp_close(&net, l);
    net_drain(&net, 3000000);           /* let the last responses and FINs get out */
    printf("httpd: served %lu requests\n", served);
    nic_netif_close(&nx);
    return 0;
}
