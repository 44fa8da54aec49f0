/* The QEMU platform: no console rings, no device pages.  Console bytes go
 * through the COM1 UART by ring-3 port I/O (the kernel opens those ports in
 * the TSS I/O bitmap) and power off is a write to isa-debug-exit. */
#include "platform.h"
#include "libos.h"
#include "xomb_abi.h"

#define LSR (XOMB_COM1 + 5)
#define LSR_DATA_READY 0x01
#define LSR_THR_EMPTY 0x20

static inline void outb(uint16_t port, uint8_t v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

void uart_write(const char *buf, unsigned long n)
{
    for (unsigned long i = 0; i < n; i++) {
        while (!(inb(LSR) & LSR_THR_EMPTY))
            cpu_relax();
        outb(XOMB_COM1, (uint8_t)buf[i]);
    }
}

int uart_getc_nowait(void)
{
    if (inb(LSR) & LSR_DATA_READY)
        return inb(XOMB_COM1);
    return -1;
}

void qemu_poweroff(unsigned status)
{
    outb(XOMB_PANIC_PORT, (uint8_t)status);
    for (;;)
        cpu_relax();
}
