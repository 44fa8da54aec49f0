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
