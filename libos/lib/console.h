/* Console and formatted output (console.c, printf.c). */
#pragma once
#include <stdarg.h>
#include <stddef.h>

int putchar(int c);
int puts(const char *s);                /* s and a newline */
void console_write(const char *s, size_t n);
void console_flush(void);
/* If set, console_write() hands its bytes here instead (xsh redirection). */
extern void (*console_capture)(const char *s, size_t n);
int getchar(void);                      /* blocks (polls) for one byte */
/* 1 if ^C was typed (it is consumed, with whatever was typed before it,
 * as a terminal's interrupt character); else 0, and the input stays for
 * getchar() -- ours or a child's.  Never waits. */
int console_take_interrupt(void);
/* Read a line with echo and backspace; no newline stored.  Returns its
 * length, or -1 on end of input (^D on an empty line). */
int readline(char *buf, int size);

int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vprintf(const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
