/* The console: bytes out and in, whatever the platform (platform*.c).
 * Output is buffered per line so one ring update (and at most one
 * doorbell) carries a whole line. */
#include "console.h"
#include "platform.h"
#include "libos.h"
#include "string.h"
#include "upcall.h"

static char outbuf[256];
static size_t outlen;

void console_flush(void)
{
    if (outlen) {
        platform_putc_raw(outbuf, outlen);
        outlen = 0;
    }
    platform_console_flush();
}

void (*console_capture)(const char *s, size_t n);

void console_write(const char *s, size_t n)
{
    if (console_capture) {              /* the shell's `> FILE` */
        console_capture(s, n);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        outbuf[outlen++] = s[i];
        if (s[i] == '\n' || outlen == sizeof(outbuf)) {
            platform_putc_raw(outbuf, outlen);
            outlen = 0;
        }
    }
}

int putchar(int c)
{
    char ch = (char)c;
    console_write(&ch, 1);
    return (unsigned char)c;
}

int puts(const char *s)
{
    console_write(s, strlen(s));
    putchar('\n');
    return 0;
}

static int pushed_back = -1;    /* a byte console_take_interrupt() looked at */

int getchar(void)
{
    int c;
    console_flush();            /* the prompt must be visible before we wait */
    if (pushed_back >= 0) {
        c = pushed_back;
        pushed_back = -1;
        return c;
    }
    /* Nothing typed: halt this CPU until its next tick rather than spin (a
     * waiting shell costs the host nothing); the root's ticks arrive as TIMER
     * upcalls, which cpu_wait_tick() turns back into a return here. */
    for (int spins = 0; (c = platform_getc_nowait()) < 0; spins++) {
        if (spins < 2000 || cpu_wait_tick(libos_home_cpu) < 0)
            cpu_relax();
    }
    return c;
}

int console_take_interrupt(void)
{
    if (pushed_back == 3) {
        pushed_back = -1;
        return 1;
    }
    /* Look for ^C anywhere in what was typed, without taking other bytes: the
     * program the shell runs reads the same ring, and its input must reach it.
     * Like a terminal's interrupt character, ^C discards what was typed before. */
    int r = platform_take_byte(3);
    if (r >= 0)
        return r;
    if (pushed_back >= 0)               /* a UART cannot be looked into: take one */
        return 0;
    int c = platform_getc_nowait();
    pushed_back = c == 3 ? -1 : c;
    return c == 3;
}

int readline(char *buf, int size)
{
    int n = 0;
    for (;;) {
        int c = getchar();
        if (c == '\r' || c == '\n') {
            putchar('\n');
            break;
        }
        if (c == 4) {                           /* ^D */
            if (n == 0)
                return -1;
            continue;
        }
        if (c == 8 || c == 127) {               /* backspace / delete */
            if (n > 0) {
                n--;
                console_write("\b \b", 3);
                console_flush();
            }
            continue;
        }
        if (c == 21) {                          /* ^U: kill the line */
            while (n > 0) {
                n--;
                console_write("\b \b", 3);
            }
            console_flush();
            continue;
        }
        if (c < 32 || n >= size - 1)
            continue;
        buf[n++] = (char)c;
        putchar(c);
        console_flush();
    }
    buf[n] = 0;
    console_flush();
    return n;
}
