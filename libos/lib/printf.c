/* printf and friends: %d %i %u %x %X %p %s %c %o %%, length modifiers
 * l ll z h hh, flags '-' '0' ' ' '+' '#', width and precision (also '*'). */
#include "console.h"
#include "string.h"
#include <stdint.h>

struct out {
    char *buf;          /* NULL: write to the console */
    size_t size, len;
};

static void emit(struct out *o, char c)
{
    if (o->buf) {
        if (o->len + 1 < o->size)
            o->buf[o->len] = c;
    } else {
        putchar(c);
    }
    o->len++;
}

static void emit_pad(struct out *o, char c, int n)
{
    while (n-- > 0)
        emit(o, c);
}

int vsnprintf_out(struct out *o, const char *fmt, va_list ap);

int vsnprintf_out(struct out *o, const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            emit(o, *fmt);
            continue;
        }
        const char *start = fmt++;
        int left = 0, zero = 0, plus = 0, space = 0, alt = 0;
        for (;; fmt++) {
            if (*fmt == '-') left = 1;
            else if (*fmt == '0') zero = 1;
            else if (*fmt == '+') plus = 1;
            else if (*fmt == ' ') space = 1;
            else if (*fmt == '#') alt = 1;
            else break;
        }
        int width = 0, prec = -1;
        if (*fmt == '*') {
            width = va_arg(ap, int);
            if (width < 0) { left = 1; width = -width; }
            fmt++;
        } else {
            while (isdigit(*fmt)) width = width * 10 + (*fmt++ - '0');
        }
        if (*fmt == '.') {
            fmt++;
            prec = 0;
            if (*fmt == '*') { prec = va_arg(ap, int); fmt++; }
            else while (isdigit(*fmt)) prec = prec * 10 + (*fmt++ - '0');
        }
        int lng = 0;                            /* 0 int, 1 long, -1 short, -2 char */
        for (;; fmt++) {
            if (*fmt == 'l' || *fmt == 'z' || *fmt == 'j' || *fmt == 't') lng = 1;
            else if (*fmt == 'h') lng = lng < 0 ? -2 : -1;
            else break;
        }
        char c = *fmt;
        if (!c) {                               /* '%' at the end: print it */
            for (; *start; start++) emit(o, *start);
            break;
        }
        if (c == '%') { emit(o, '%'); continue; }
        if (c == 'c') {
            if (!left) emit_pad(o, ' ', width - 1);
            emit(o, (char)va_arg(ap, int));
            if (left) emit_pad(o, ' ', width - 1);
            continue;
        }
        if (c == 's') {
            const char *s = va_arg(ap, const char *);
            if (!s) s = "(null)";
            int n = (int)(prec >= 0 ? strnlen(s, (size_t)prec) : strlen(s));
            if (!left) emit_pad(o, ' ', width - n);
            for (int i = 0; i < n; i++) emit(o, s[i]);
            if (left) emit_pad(o, ' ', width - n);
            continue;
        }
        uint64_t v;
        int neg = 0, base = 10, upper = 0;
        const char *prefix = "";
        if (c == 'd' || c == 'i') {
            int64_t sv = lng > 0 ? va_arg(ap, long) : va_arg(ap, int);
            if (lng == -1) sv = (short)sv;
            if (lng == -2) sv = (signed char)sv;
            neg = sv < 0;
            v = neg ? -(uint64_t)sv : (uint64_t)sv;
        } else if (c == 'u' || c == 'x' || c == 'X' || c == 'o') {
            v = lng > 0 ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int);
            if (lng == -1) v = (unsigned short)v;
            if (lng == -2) v = (unsigned char)v;
            if (c == 'x' || c == 'X') {
                base = 16;
                upper = c == 'X';
                if (alt && v) prefix = upper ? "0X" : "0x";
            } else if (c == 'o') {
                base = 8;
                if (alt) prefix = "0";
            }
        } else if (c == 'p') {
            v = (uint64_t)(uintptr_t)va_arg(ap, void *);
            base = 16;
            prefix = "0x";
        } else {                                /* unknown: print it verbatim */
            for (; start <= fmt; start++) emit(o, *start);
            continue;
        }
        char digits[24];
        int nd = 0;
        const char *set = upper ? "0123456789ABCDEF" : "0123456789abcdef";
        do {
            digits[nd++] = set[v % base];
            v /= base;
        } while (v);
        if (prec == 0 && nd == 1 && digits[0] == '0')
            nd = 0;
        int zeros = prec > nd ? prec - nd : 0;
        char sign = neg ? '-' : plus ? '+' : space ? ' ' : 0;
        int len = nd + zeros + (sign ? 1 : 0) + (int)strlen(prefix);
        if (zero && !left && prec < 0 && width > len) {
            zeros += width - len;
            len = width;
        }
        if (!left) emit_pad(o, ' ', width - len);
        if (sign) emit(o, sign);
        for (const char *p = prefix; *p; p++) emit(o, *p);
        emit_pad(o, '0', zeros);
        while (nd) emit(o, digits[--nd]);
        if (left) emit_pad(o, ' ', width - len);
    }
    return (int)o->len;
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct out o = { buf, size, 0 };
    static char dummy;
    if (!buf || size == 0) {            /* count only */
        o.buf = &dummy;
        o.size = 0;
    }
    int n = vsnprintf_out(&o, fmt, ap);
    if (buf && size)
        buf[o.len < size ? o.len : size - 1] = 0;
    return n;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

int vprintf(const char *fmt, va_list ap)
{
    struct out o = { 0, 0, 0 };
    return vsnprintf_out(&o, fmt, ap);
}

int printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vprintf(fmt, ap);
    va_end(ap);
    return n;
}
