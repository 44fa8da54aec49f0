/* The guest's link: the NIC driver (nic.h) as a struct netif (nic_netif.c).
 * Not portable on purpose: everything else in net/ is. */
#pragma once
#include "net.h"
#include "nic.h"

struct nic_netif {
    struct nic nic;
    struct netif nif;
};

/* Open NIC VF `vf`, take the address from boot information (--guest-ip) and
 * make a netif of it.  0 or a negative XE_* error (no NIC, VF not ours). */
long nic_netif_open(struct nic_netif *x, unsigned vf);
void nic_netif_close(struct nic_netif *x);

/* What the network programs share: parse "-vf N", "-a ADDR/PREFIX" and
 * "-irq" (wait for frames by interrupt, halting the CPU, instead of polling)
 * at argv[*i] (1 if taken, advancing *i), ... */
struct net_opts { unsigned vf; const char *addr; int irq; };
int net_opt(struct net_opts *o, int argc, char **argv, int *i);
/* ... then open the VF, apply the address and start the stack on it.  Prints
 * why not and returns -1 if it cannot. */
int net_start(struct net *n, struct nic_netif *x, const struct net_opts *o, const char *prog);
