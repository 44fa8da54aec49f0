/* A small TCP/IP stack for a library OS (libos/lib/net/, docs/NETWORK.md).
 *
 * Read it like a book, bottom up, one file per protocol:
 *
 *   net.c   the event loop: receive frames, dispatch them, run the timers
 *   eth.c   Ethernet II framing
 *   arp.c   IPv4 address -> MAC address, with a cache and a queue of frames
 *           waiting for an answer
 *   ip.c    IPv4: header checks, the Internet checksum, routing to the
 *           gateway, no fragments
 *   icmp.c  echo request/reply (ping)
 *   udp.c   datagram sockets
 *   tcp.c   reliable streams: the state machine, sliding windows,
 *           retransmission
 *   http.c  a tiny HTTP/1.0 server on top of tcp.c (httpd, tools/nethost)
 *
 * The stack never touches a device.  It talks to a `struct netif` (four
 * function pointers), so the same code runs in the guest over the NIC
 * driver (nic_netif.c) and on a Linux host over a TAP device
 * (tools/nethost/), where real ping, curl and Python clients test it.
 *
 * It is single threaded and event driven: nothing happens unless the
 * program calls net_poll() (directly, or through one of the blocking
 * helpers, which loop on net_poll() until their condition holds or a
 * timeout passes).  There is no malloc: all state lives in `struct net`,
 * in fixed pools whose sizes are the limits below.
 *
 * Byte order: addresses and ports in this API are in host byte order
 * (10.0.2.15 is 0x0a00020f); the wire format is big endian.
 */
#pragma once
#include <stddef.h>
#include <stdint.h>

/* ---- limits -------------------------------------------------------------- */
#define NET_FRAME_MAX 1514          /* Ethernet header + 1500 bytes (no FCS) */
#define NET_MTU 1500                /* biggest IP packet we send or accept */
#define ARP_CACHE_SIZE 16           /* remembered neighbours */
#define ARP_TIMEOUT_US 60000000ULL  /* an entry is trusted for 60 s */
#define ARP_RETRY_US 1000000ULL     /* re-ask an unanswered question after 1 s */
#define ARP_PENDING 4               /* frames held while their next hop is resolved */
#define UDP_SOCKETS 4
#define UDP_QUEUE 4                 /* datagrams queued per socket; more are dropped */
#define UDP_MAX_PAYLOAD 1472        /* NET_MTU - IP header - UDP header */
#define TCP_CONNS 8                 /* listeners + connections, all states */
#define TCP_SNDBUF 16384            /* bytes queued, unacknowledged (power of 2) */
#define TCP_RCVBUF 16384            /* bytes received, not yet read (power of 2) */
#define TCP_MSS 1460                /* NET_MTU - IP header - TCP header */
#define TCP_RTO_INITIAL_US 1000000U /* RFC 6298: 1 s before the first RTT sample */
#define TCP_RTO_MIN_US 200000U      /* RFC 6298 says 1 s; Linux uses 200 ms */
#define TCP_RTO_MAX_US 8000000U     /* backoff stops doubling here */
#define TCP_MAX_RETRIES 8           /* timeouts in a row before we give up (RST) */
#define TCP_TIME_WAIT_US 2000000U   /* 2*MSL, kept short: this is a teaching stack */

/* ---- errors (returned negated) ------------------------------------------- */
#define NET_EAGAIN 1        /* nothing yet: try again after net_poll() */
#define NET_ETIMEDOUT 2
#define NET_ECONNREFUSED 3
#define NET_ECONNRESET 4
#define NET_ENOTCONN 5
#define NET_ENOBUFS 6       /* a pool is exhausted */
#define NET_EADDRINUSE 7
#define NET_EINVAL 8
#define NET_EPIPE 9         /* send after close */
#define NET_EMSGSIZE 10
const char *net_strerror(int err);

/* ---- the link the stack runs on ------------------------------------------ */
struct netif {
    void *ctx;                                  /* the driver's own state */
    int (*send)(void *ctx, const void *frame, unsigned len);    /* 0 or < 0 */
    int (*recv)(void *ctx, void *buf, unsigned cap);    /* one frame's length, 0: none */
    void (*wait)(void *ctx, uint64_t timeout_us);   /* until a frame may be there */
    uint64_t (*now_us)(void *ctx);              /* a monotonic clock */
    uint8_t mac[6];
    uint32_t ip, gateway;                       /* host byte order */
    unsigned prefix;                            /* 24 for a /24 */
    uint64_t seed;                              /* randomness for ISNs and ports */
};

/* ---- protocol state (the fields are the stack's; read, don't write) ------ */
struct arp_entry {
    uint32_t ip;
    uint8_t mac[6];
    uint8_t state;          /* ARP_FREE, ARP_RESOLVING, ARP_RESOLVED */
    uint64_t stamp;         /* when resolved, or when last asked */
};

struct arp_pending {        /* an IP packet waiting for its next hop's MAC */
    uint32_t next_hop;
    unsigned len;           /* 0: slot free */
    uint8_t frame[NET_FRAME_MAX];
};

struct udp_dgram {
    uint32_t ip;
    uint16_t port, len;
    uint8_t data[UDP_MAX_PAYLOAD];
};

struct udp_sock {
    uint16_t port;          /* 0: free */
    uint16_t head, count;   /* the receive queue (a ring of UDP_QUEUE) */
    uint32_t dropped;       /* datagrams that found the queue full */
    struct udp_dgram q[UDP_QUEUE];
};

enum tcp_state {
    TCP_FREE = 0,           /* slot unused */
    TCP_CLOSED,             /* dead (reset, timed out) until the program closes it */
    TCP_LISTEN,
    TCP_SYN_SENT,
    TCP_SYN_RCVD,
    TCP_ESTABLISHED,
    TCP_FIN_WAIT_1,
    TCP_FIN_WAIT_2,
    TCP_CLOSING,
    TCP_TIME_WAIT,
    TCP_CLOSE_WAIT,
    TCP_LAST_ACK,
};

struct tcp_conn {
    enum tcp_state state;
    uint32_t rip;                   /* remote address (local is the netif's) */
    uint16_t lport, rport;
    struct tcp_conn *listener;      /* SYN_RCVD/not yet accepted: who will accept us */
    uint8_t accepted;               /* the program holds this connection */
    uint8_t closed;                 /* the program called tcp_close(): free when done */
    uint8_t backlog;                /* LISTEN: connections allowed to wait for accept */
    int err;                        /* why it died (NET_E*), once CLOSED */

    /* send side (RFC 793 names) */
    uint32_t iss;                   /* our initial sequence number */
    uint32_t snd_una;               /* oldest unacknowledged sequence number */
    uint32_t snd_nxt;               /* next sequence number to send */
    uint32_t snd_max;               /* highest sequence number sent so far + 1 */
    uint32_t snd_wnd;               /* the peer's advertised window */
    uint32_t snd_wl1, snd_wl2;      /* seq and ack of the segment that set snd_wnd */
    uint16_t mss;                   /* the most data we put in one segment */
    uint8_t fin_queued, fin_acked;  /* the program closed; our FIN was acknowledged */
    uint32_t snd_head, snd_len;     /* the send buffer: snd_len bytes from snd_una */

    /* receive side */
    uint32_t irs, rcv_nxt;          /* the peer's ISN, the next byte we expect */
    uint32_t rcv_head, rcv_len;     /* the receive buffer: bytes not yet read */
    uint32_t rcv_adv;               /* the window we last advertised */
    uint8_t fin_rcvd;               /* the peer has nothing more to send */

    /* the retransmission timer (RFC 6298) */
    uint64_t rto_deadline;          /* 0: stopped */
    uint32_t rto_us, srtt_us, rttvar_us;
    uint32_t retries;               /* timeouts since the last progress */
    uint32_t dupacks;               /* duplicate ACKs in a row (fast retransmit at 3) */
    uint8_t rtt_timing;             /* timing the segment ending at rtt_seq */
    uint32_t rtt_seq;
    uint64_t rtt_start;
    uint64_t tw_deadline;           /* TIME_WAIT ends */

    uint64_t retransmits;           /* statistics */

    /* the buffers last: a new connection clears everything before sndbuf */
    uint8_t sndbuf[TCP_SNDBUF];
    uint8_t rcvbuf[TCP_RCVBUF];
};

struct net_stats {
    uint64_t rx_frames, tx_frames, tx_errors;
    uint64_t drop_runt, drop_not_for_us, drop_bad_ip, drop_ip_csum, drop_fragment;
    uint64_t drop_bad_udp, drop_bad_tcp, drop_bad_icmp, drop_no_port, drop_arp_full;
    uint64_t tcp_rst_sent, tcp_retransmits, tcp_out_of_order, tcp_out_of_window;
    uint64_t tcp_fast_retransmits;      /* (also counted in tcp_retransmits) */
};

struct ping_state {         /* the one outstanding echo request of icmp_ping() */
    uint16_t id, seq;
    uint8_t replied, ttl;
    uint64_t sent_at, rtt_us;
    unsigned len;
};

struct net {
    struct netif *nif;
    uint64_t now;                       /* the clock at the start of this poll */
    uint32_t netmask;
    uint16_t ip_id, next_port;
    uint32_t isn_counter;
    struct arp_entry arp[ARP_CACHE_SIZE];
    struct arp_pending pending[ARP_PENDING];
    struct udp_sock udp[UDP_SOCKETS];
    struct tcp_conn tcp[TCP_CONNS];
    struct ping_state ping;
    struct net_stats stats;
    uint8_t rx[NET_FRAME_MAX + 2];
    uint8_t tx[NET_FRAME_MAX + 2];      /* where outgoing packets are built */
};

/* ---- the public API -------------------------------------------------------- */
/* Set up a stack on a link (the netif must outlive the stack). */
void net_init(struct net *n, struct netif *nif);
/* Receive and handle frames and run the timers; waits at most timeout_us
 * for something to happen.  The heart of every blocking helper below. */
void net_poll(struct net *n, uint64_t timeout_us);
/* Hand one received frame to the stack (net_poll does this; tests call it
 * directly with hostile input). */
void net_input(struct net *n, const void *frame, unsigned len);
/* Poll until no TCP connection the program has closed is still alive
 * (their data and FINs delivered) or timeout_us passes. */
void net_drain(struct net *n, uint64_t timeout_us);

/* Addresses. */
int ip_parse(const char *s, uint32_t *ip);                  /* "10.0.2.15": 0 or -1 */
int ip_parse_cidr(const char *s, uint32_t *ip, unsigned *prefix);  /* "10.0.2.15/24" */
char *ip_format(uint32_t ip, char buf[16]);

/* ICMP echo: send one request of `len` payload bytes and wait for its reply.
 * 0 and *rtt_us (and *ttl) or -NET_ETIMEDOUT. */
int icmp_ping(struct net *n, uint32_t dst, uint16_t seq, unsigned len, uint64_t timeout_us,
              uint64_t *rtt_us, uint8_t *ttl);

/* UDP.  port 0 in udp_bind picks an ephemeral port. */
struct udp_sock *udp_bind(struct net *n, uint16_t port);    /* NULL: in use or no slot */
void udp_close(struct net *n, struct udp_sock *s);
int udp_sendto(struct net *n, struct udp_sock *s, uint32_t ip, uint16_t port,
               const void *buf, unsigned len);              /* len or -NET_E* */
/* Take one datagram (waiting up to timeout_us; 0 = don't wait): its length
 * (truncated to cap) or -NET_EAGAIN / -NET_ETIMEDOUT. */
int udp_recvfrom(struct net *n, struct udp_sock *s, void *buf, unsigned cap, uint32_t *ip,
                 uint16_t *port, uint64_t timeout_us);

/* TCP. */
struct tcp_conn *tcp_listen(struct net *n, uint16_t port, unsigned backlog);
/* An established connection from the listener's queue (waiting up to
 * timeout_us): 0, or -NET_EAGAIN/-NET_ETIMEDOUT. */
int tcp_accept(struct net *n, struct tcp_conn *l, struct tcp_conn **out, uint64_t timeout_us);
/* Active open; waits up to timeout_us for the handshake. */
int tcp_connect(struct net *n, uint32_t ip, uint16_t port, struct tcp_conn **out,
                uint64_t timeout_us);
/* Queue bytes for sending (never waits): how many fit, or -NET_E*. */
int tcp_send(struct net *n, struct tcp_conn *c, const void *buf, unsigned len);
/* Queue all len bytes, polling while the send buffer is full: len or -NET_E*. */
int tcp_send_all(struct net *n, struct tcp_conn *c, const void *buf, unsigned len,
                 uint64_t timeout_us);
/* Read received bytes (never waits): how many, 0 at end of stream (the
 * peer closed and everything is read), or -NET_EAGAIN / -NET_E*. */
int tcp_recv(struct net *n, struct tcp_conn *c, void *buf, unsigned cap);
/* Same, waiting up to timeout_us for bytes or the end of the stream. */
int tcp_recv_wait(struct net *n, struct tcp_conn *c, void *buf, unsigned cap,
                  uint64_t timeout_us);
/* We are done: queued data is still delivered, then our FIN; the stack
 * frees the connection when the close completes.  Don't use c afterwards.
 * Closing a listener resets the connections not yet accepted. */
void tcp_close(struct net *n, struct tcp_conn *c);
/* Give up now: RST to the peer, the slot is free at once. */
void tcp_abort(struct net *n, struct tcp_conn *c);
const char *tcp_state_name(enum tcp_state s);

/* A tiny HTTP/1.0 server (http.c): serve one request on c, then close it.
 * lookup(path, &data, &len, ctx) returns 0 with the file's bytes, or < 0
 * for 404.  Returns the HTTP status sent (200, 400, 404) or -NET_E*. */
typedef int (*http_lookup_fn)(const char *path, const void **data, uint64_t *len, void *ctx);
typedef void (*http_release_fn)(const void *data, uint64_t len, void *ctx);
int http_serve(struct net *n, struct tcp_conn *c, http_lookup_fn lookup,
               http_release_fn release, void *ctx, uint64_t timeout_us);
/* Parse "GET /path HTTP/1.x\r\n...\r\n\r\n" in req[0..len): 1 if more bytes are
 * needed, 0 with the path, or -1 for a bad request. */
int http_parse_request(const char *req, unsigned len, char *path, unsigned cap);

/* ---- between the files of the stack ------------------------------------- */
static inline uint16_t net_get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t net_get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void net_put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void net_put32(uint8_t *p, uint32_t v)
{
    net_put16(p, (uint16_t)(v >> 16));
    net_put16(p + 2, (uint16_t)v);
}

#define ETH_HLEN 14
#define ETH_TYPE_IP 0x0800
#define ETH_TYPE_ARP 0x0806
#define IP_HLEN 20                      /* without options (we never send any) */
#define IP_PROTO_ICMP 1
#define IP_PROTO_TCP 6
#define IP_PROTO_UDP 17
#define NET_PAYLOAD (ETH_HLEN + IP_HLEN) /* where a transport header starts in n->tx */

struct ip_info {            /* what ip_input tells the transports about a packet */
    uint32_t src, dst;
    uint8_t ttl, proto;
};

extern const uint8_t eth_broadcast[6];
void eth_input(struct net *n, const uint8_t *f, unsigned len);
int eth_output(struct net *n, uint8_t *frame, const uint8_t dst[6], uint16_t type,
               unsigned payload_len);
void arp_input(struct net *n, const uint8_t *p, unsigned len);
/* The MAC for next_hop if known (1); else ask (0). */
int arp_resolve(struct net *n, uint32_t next_hop, uint8_t mac[6]);
int arp_hold(struct net *n, uint32_t next_hop, const uint8_t *frame, unsigned len);
void arp_timer(struct net *n);
void ip_input(struct net *n, const uint8_t *p, unsigned len);
/* Send n->tx[NET_PAYLOAD .. + len) to dst as protocol proto. */
int ip_output(struct net *n, uint32_t dst, uint8_t proto, unsigned len);
uint32_t net_csum_add(uint32_t sum, const void *data, unsigned len);
uint16_t net_csum_fold(uint32_t sum);
uint32_t net_pseudo_sum(uint32_t src, uint32_t dst, uint8_t proto, unsigned len);
void icmp_input(struct net *n, const struct ip_info *ip, const uint8_t *p, unsigned len);
void udp_input(struct net *n, const struct ip_info *ip, const uint8_t *p, unsigned len);
void tcp_input(struct net *n, const struct ip_info *ip, const uint8_t *p, unsigned len);
void tcp_timer(struct net *n);
/* The earliest time a TCP or ARP timer wants to run (0: none). */
uint64_t tcp_next_deadline(struct net *n);
uint16_t net_ephemeral_port(struct net *n);
/* 32-bit sequence arithmetic: a < b in the circle of sequence numbers. */
static inline int seq_lt(uint32_t a, uint32_t b) { return (int32_t)(a - b) < 0; }
static inline int seq_le(uint32_t a, uint32_t b) { return (int32_t)(a - b) <= 0; }
static inline int seq_gt(uint32_t a, uint32_t b) { return (int32_t)(a - b) > 0; }
static inline int seq_ge(uint32_t a, uint32_t b) { return (int32_t)(a - b) >= 0; }
