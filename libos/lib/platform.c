/* Console rings and the platform page (the VMM's devices, devices/ in the
 * host).  A ring is one page: u32 head (consumer), u32 tail (producer),
 * u32 waiting (the consumer sleeps: the producer must ring the doorbell),
 * data at XOMB_RING_DATA.  Indices run freely modulo 2^32; the ring holds
 * tail - head bytes.
 *
 * A doorbell is a VM exit, the expensive thing on a PVM host, so we ring it
 * only when the host says it is waiting, and only at a newline or when the
 * ring is full; otherwise the host drains the ring on its own within 50 ms.
 */
#include "platform.h"
#include "libos.h"
#include "vm.h"

struct ring {
    volatile uint32_t head;
    volatile uint32_t tail;
    volatile uint32_t waiting;
};

#define RING(va) ((struct ring *)(va))
#define RING_BYTES(va) ((volatile char *)((va) + XOMB_RING_DATA))

static int have_rings(void)
{
    static int known = -1;
    if (known < 0)
        known = libos_host != XOMB_HOST_QEMU && vm_mapped(XOMB_CONSOLE_OUT_VA);
    return known;
}

static void ring_doorbell(void)
{
    if (vm_mapped(XOMB_CONSOLE_BELL_VA))
        *(volatile uint32_t *)XOMB_CONSOLE_BELL_VA = 1;
}

void platform_putc_raw(const char *buf, unsigned long n)
{
    if (!have_rings()) {
        uart_write(buf, n);
        return;
    }
    struct ring *r = RING(XOMB_CONSOLE_OUT_VA);
    volatile char *data = RING_BYTES(XOMB_CONSOLE_OUT_VA);
    while (n) {
        uint32_t tail = r->tail, head = r->head;
        uint32_t room = XOMB_RING_SIZE - (tail - head);
        if (room == 0) {                /* full: wake the host, wait for it */
            if (r->waiting)
                ring_doorbell();
            while (r->head == head)
                cpu_relax();
            continue;
        }
        int newline = 0;
        unsigned long k = n < room ? n : room;
        for (unsigned long i = 0; i < k; i++) {
            data[(tail + i) % XOMB_RING_SIZE] = buf[i];
            newline |= buf[i] == '\n';
        }
        compiler_barrier();             /* bytes before the tail (x86 is TSO) */
        r->tail = tail + (uint32_t)k;
        compiler_barrier();
        if (r->waiting && (newline || k == room))
            ring_doorbell();
        buf += k;
        n -= k;
    }
}

int platform_getc_nowait(void)
{
    if (!have_rings())
        return uart_getc_nowait();
    if (!vm_mapped(XOMB_CONSOLE_IN_VA))
        return -1;
    struct ring *r = RING(XOMB_CONSOLE_IN_VA);
    uint32_t head = r->head;
    if (head == r->tail)
        return -1;
    compiler_barrier();
    int c = (unsigned char)RING_BYTES(XOMB_CONSOLE_IN_VA)[head % XOMB_RING_SIZE];
    compiler_barrier();
    r->head = head + 1;
    return c;
}

int platform_take_byte(int want)
{
    if (!have_rings() || !vm_mapped(XOMB_CONSOLE_IN_VA))
        return -1;
    struct ring *r = RING(XOMB_CONSOLE_IN_VA);
    uint32_t head = r->head, tail = r->tail;
    compiler_barrier();
    for (uint32_t i = head; i != tail; i++) {
        if (RING_BYTES(XOMB_CONSOLE_IN_VA)[i % XOMB_RING_SIZE] == (unsigned char)want) {
            compiler_barrier();
            r->head = i + 1;            /* the byte and everything typed before it */
            return 1;
        }
    }
    return 0;
}

void platform_console_flush(void)
{
    if (have_rings()) {
        struct ring *r = RING(XOMB_CONSOLE_OUT_VA);
        if (r->waiting && r->head != r->tail)
            ring_doorbell();
    }
}

void platform_console_drain(void)
{
    if (!have_rings())
        return;
    struct ring *r = RING(XOMB_CONSOLE_OUT_VA);
    uint64_t khz = libos_tsc_khz ? libos_tsc_khz : 3000000;
    uint64_t deadline = rdtsc() + khz * 200;        /* 200 ms at most */
    if (r->head != r->tail)
        ring_doorbell();
    while (r->head != r->tail && rdtsc() < deadline)
        cpu_relax();
}

void platform_poweroff(unsigned status)
{
    platform_console_drain();
    if (libos_host == XOMB_HOST_QEMU)
        qemu_poweroff(status);
    if (vm_mapped(XOMB_PLATFORM_VA))
        *(volatile uint32_t *)(XOMB_PLATFORM_VA + XOMB_PLAT_EXIT) = status;
    for (;;)
        cpu_relax();
}

void platform_boot_timer(void)
{
    if (libos_host != XOMB_HOST_QEMU && vm_mapped(XOMB_PLATFORM_VA))
        *(volatile uint32_t *)(XOMB_PLATFORM_VA + XOMB_PLAT_BOOT_TIMER) = 1;
}
