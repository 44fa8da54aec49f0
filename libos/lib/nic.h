/* The NIC driver: one virtual function of the self-virtualizing NIC
 * (devices/nic.py, docs/DEVICES.md "The NIC").
 *
 * Like the disk: everything the device touches is in our own memory, named
 * by our own virtual addresses (the IOMMU walks our page tables): a status
 * page, a TX and an RX ring of 16-byte descriptors, one 2 KiB buffer per
 * descriptor, a fault ring.  The register page is a mapped page; its
 * doorbell is absorbed by KVM (ioeventfd) and we ring it only when the
 * device says its TX worker sleeps (NS_WAITING).  RX needs no doorbell: we
 * post buffers by moving NS_RX_TAIL, the device fills them and moves
 * NS_RX_HEAD.  Interrupts are asked for only while we are about to halt
 * (NS_IRQ), so a busy receiver costs no interrupts at all.
 *
 * Who holds which VF: VF i's register page lives at XOMB_NIC_VF_VA + i*4096
 * in whoever holds it.  init gives every VF to the shell (nic_grant_all),
 * the shell lends all it holds to each program it runs and takes them back
 * after (nic_take_back); a program can pass VF i on to a child of its own
 * with nic_grant(child, i).  nic_open(n, i) binds VF i with rings at
 * XOMB_NIC_QUEUE_VA + i*XOMB_NIC_QUEUE_STRIDE.
 */
#pragma once
#include <stdint.h>
#include "xomb_abi.h"

#define NIC_MTU_FRAME 1514            /* largest Ethernet frame without FCS */
#define NIC_BUF 2048                  /* bytes per TX/RX buffer */

struct net_config { uint8_t mac[6]; uint32_t ip, gateway; unsigned prefix; };  /* ip/gateway in host byte order */

struct nic_desc {                     /* XOMB_NDESC_SIZE bytes, TX and RX */
    uint64_t buf;                     /* our virtual address */
    uint16_t len;                     /* TX: frame length; RX: written by the device */
    uint16_t buflen;                  /* RX: buffer size */
    uint16_t status;                  /* device: XOMB_NST_* | XOMB_NST_DONE */
    uint16_t rsvd;
};

struct nic {
    uint8_t mac[6];
    unsigned vf;
    volatile uint8_t *regs;           /* the VF register page */
    volatile uint8_t *st;             /* status page */
    volatile struct nic_desc *tx, *rx;
    uint8_t *txbuf, *rxbuf;           /* qsize buffers of NIC_BUF bytes each */
    void *faults;                     /* fault ring (XOMB_FAULT_REC records) */
    uint32_t qsize, fault_n;
    uint32_t tx_tail;                 /* TX descriptors posted */
    uint32_t rx_next;                 /* next RX descriptor to take */
    uint32_t rx_tail;                 /* RX buffers posted */
    uint32_t rang;                    /* the NS_WAITING sleep number we last rang for */
    int use_irq;
    uint64_t doorbells, sent, received, tx_full, rx_errors;
};

#define NS32(n, off) (*(volatile uint32_t *)((n)->st + (off)))
#define NS64(n, off) (*(volatile uint64_t *)((n)->st + (off)))

/* Bind VF `vf`, whose register page this process was granted (see nic_grant_all), with rings in our own memory.  0 or a negative XE_* error. */
long nic_open(struct nic *n, unsigned vf);
/* Unbind, after the TX ring has drained (at most NIC_CLOSE_DRAIN_US). */
#define NIC_CLOSE_DRAIN_US 200000
void nic_close(struct nic *n);
/* Queue one frame (copied; the source MAC must be ours): 0, or negative if it is too long or the TX ring is full. */
int nic_send(struct nic *n, const void *frame, unsigned len);
/* Take one received frame: its length (copied into buf, truncated to cap), or 0 if none is pending. */
int nic_recv(struct nic *n, void *buf, unsigned cap);
/* Wait until a frame may have arrived, or timeout_us passes (by interrupt: halt via YIELD IDLE like disk_wait; or by polling). */
void nic_wait(struct nic *n, uint64_t timeout_us);
void nic_use_interrupts(struct nic *n, int on);
/* The guest's network configuration from boot information (--guest-ip), with n->mac filled in after nic_open. 0 or negative if there is no NIC. */
int net_config(struct nic *n, struct net_config *out);
/* In a parent (init, the shell): grant every NIC VF (or VF `vf`) to address space `as`, like disk_grant_all. */
void nic_grant_all(long as);
long nic_grant(long as, unsigned vf);
unsigned nic_vf_count(void);
uint64_t time_us(void);               /* microseconds since boot from rdtsc and libos_tsc_khz (add it to nic.c or to an existing helper if none exists) */

/* Beyond the API above. */
/* A frame is waiting in the RX ring. */
int nic_rx_pending(struct nic *n);
/* Move back every VF child `as` holds (the shell, after a program ran). */
void nic_take_back(long as);
/* Does this process hold VF `vf`'s register page? */
int nic_holds(unsigned vf);
