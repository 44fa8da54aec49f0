/* A tiny HTTP/1.0 server over tcp.c: one GET per connection.
 *
 *   GET /path HTTP/1.0\r\n  (headers...)  \r\n
 *   -> HTTP/1.0 200 OK, Content-Length, the bytes, and we close.
 *
 * The request is read with a bound (HTTP_REQ_MAX bytes) and a timeout; a
 * request we cannot parse gets 400, a path the lookup does not know 404.
 * Paths are checked before they reach the file system: absolute, printable,
 * no "..".  A path ending in '/' means its index.html.  httpd (guest) and tools/nethost (host) both serve with this.
 */
#include "net.h"
#include "string.h"

#define HTTP_REQ_MAX 2048
#define HTTP_PATH_MAX 256

static int starts(const char *s, unsigned len, const char *w)
{
    unsigned k = (unsigned)strlen(w);
    return len >= k && memcmp(s, w, k) == 0;
}

int http_parse_request(const char *req, unsigned len, char *path, unsigned cap)
{
    /* complete when the blank line after the headers has arrived */
    int complete = 0;
    for (unsigned i = 0; i + 1 < len; i++) {
        if (req[i] == '\n' && (req[i + 1] == '\n' ||
                               (req[i + 1] == '\r' && i + 2 < len && req[i + 2] == '\n'))) {
            complete = 1;
            break;
        }
    }
    /* fail early on junk, before waiting for more */
    if (len >= 4 && !starts(req, len, "GET "))
        return -1;
    if (!complete)
        return len >= HTTP_REQ_MAX ? -1 : 1;
    unsigned i = 4, k = 0;
    if (i >= len || req[i] != '/')
        return -1;
    while (i < len && req[i] != ' ' && req[i] != '\r' && req[i] != '\n') {
        char ch = req[i++];
        if (ch < 0x21 || ch > 0x7e || k + 1 >= cap)
            return -1;
        path[k++] = ch;
    }
    path[k] = 0;
    if (i >= len || req[i] != ' ' || !starts(req + i + 1, len - i - 1, "HTTP/1."))
        return -1;
    for (unsigned j = 0; j + 1 < k; j++)
        if (path[j] == '.' && path[j + 1] == '.')
            return -1;                  /* no climbing out of the tree */
    char *q = strchr(path, '?');        /* ignore a query string */
    if (q)
        *q = 0;
    return 0;
}

static const char *content_type(const char *path)
{
    unsigned k = (unsigned)strlen(path);
    if (k >= 5 && !strcmp(path + k - 5, ".html"))
        return "text/html";
    if (k >= 4 && !strcmp(path + k - 4, ".txt"))
        return "text/plain";
    return "application/octet-stream";
}

static unsigned fmt_u64(char *p, uint64_t v)
{
    char t[24];
    unsigned k = 0, n = 0;
    do
        t[k++] = (char)('0' + v % 10);
    while ((v /= 10) && k < sizeof(t));
    while (k)
        p[n++] = t[--k];
    return n;
}

static unsigned append(char *buf, unsigned at, const char *s)
{
    unsigned k = (unsigned)strlen(s);
    memcpy(buf + at, s, k);
    return at + k;
}

static int respond(struct net *n, struct tcp_conn *c, int code, const char *type,
                   const void *body, uint64_t len, uint64_t timeout_us)
{
    char h[256];
    unsigned k = append(h, 0, code == 200 ? "HTTP/1.0 200 OK\r\n"
                            : code == 404 ? "HTTP/1.0 404 Not Found\r\n"
                                          : "HTTP/1.0 400 Bad Request\r\n");
    k = append(h, k, "Server: xomb-httpd\r\nContent-Type: ");
    k = append(h, k, type);
    k = append(h, k, "\r\nContent-Length: ");
    k += fmt_u64(h + k, len);
    k = append(h, k, "\r\nConnection: close\r\n\r\n");
    int r = tcp_send_all(n, c, h, k, timeout_us);
    const uint8_t *p = body;
    for (uint64_t off = 0; r >= 0 && off < len;) {
        unsigned chunk = len - off > 65536 ? 65536 : (unsigned)(len - off);
        r = tcp_send_all(n, c, p + off, chunk, timeout_us);
        off += chunk;
    }
    tcp_close(n, c);
    return r < 0 ? r : code;
}

int http_serve(struct net *n, struct tcp_conn *c, http_lookup_fn lookup,
               http_release_fn release, void *ctx, uint64_t timeout_us)
{
    static char req[HTTP_REQ_MAX];
    char path[HTTP_PATH_MAX];
    unsigned len = 0;
    int st = 1;
    while (st == 1) {
        int r = tcp_recv_wait(n, c, req + len, HTTP_REQ_MAX - len, timeout_us);
        if (r <= 0) {                   /* the client went away or said nothing */
            if (r == 0 && len)
                break;                  /* EOF after a partial request: 400 */
            tcp_abort(n, c);
            return r < 0 ? r : -NET_ECONNRESET;
        }
        len += (unsigned)r;
        st = http_parse_request(req, len, path, sizeof(path));
    }
    if (st != 0) {
        static const char msg[] = "bad request\n";
        return respond(n, c, 400, "text/plain", msg, sizeof(msg) - 1, timeout_us);
    }
    unsigned k = (unsigned)strlen(path);
    if (path[k - 1] == '/' && k + 10 < sizeof(path))
        memcpy(path + k, "index.html", 11);     /* a directory: its index.html */
    const void *data;
    uint64_t size;
    if (lookup(path, &data, &size, ctx) < 0) {
        static const char msg[] = "not found\n";
        return respond(n, c, 404, "text/plain", msg, sizeof(msg) - 1, timeout_us);
    }
    int r = respond(n, c, 200, content_type(path), data, size, timeout_us);
    if (release)
        release(data, size, ctx);
    return r;
}
