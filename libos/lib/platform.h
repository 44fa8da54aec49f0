/* The machine below the console: rings + doorbell on the VMM, or the COM1
 * UART and QEMU's isa-debug-exit port when running on QEMU (platform_qemu.c).
 * Power off and the boot timer need the platform page, which only init has. */
#pragma once
#include <stdint.h>

/* Console bytes, whatever the platform. */
void platform_putc_raw(const char *buf, unsigned long n);  /* blocks while full */
int platform_getc_nowait(void);        /* -1 when nothing is there */
/* If byte `want` is in the console input ring, consume it and everything
 * before it: 1; not there: 0, nothing consumed; -1: no ring to look into
 * (the QEMU UART). */
int platform_take_byte(int want);
void platform_console_flush(void);     /* let the host see what is written */
void platform_console_drain(void);     /* wait (bounded) until the host took it */

__attribute__((noreturn)) void platform_poweroff(unsigned status);
void platform_boot_timer(void);

/* platform_qemu.c */
void uart_write(const char *buf, unsigned long n);
int uart_getc_nowait(void);
__attribute__((noreturn)) void qemu_poweroff(unsigned status);
