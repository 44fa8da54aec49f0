/* Names and sentences for the kernel's error numbers (vmm/abi.py ERRORS). */
#include "syscall.h"
#include "mem.h"

static const char *const names[] = {
    [0] = "OK",
    [XOMB_EINVAL] = "EINVAL",
    [XOMB_EBADH] = "EBADH",
    [XOMB_ENOTHELD] = "ENOTHELD",
    [XOMB_EPERM] = "EPERM",
    [XOMB_EEXIST] = "EEXIST",
    [XOMB_ENOTABLE] = "ENOTABLE",
    [XOMB_EBUSY] = "EBUSY",
    [XOMB_ETYPE] = "ETYPE",
    [XOMB_ERANGE] = "ERANGE",
};

static const char *const sentences[] = {
    [0] = "success",
    [XOMB_EINVAL] = "malformed argument",
    [XOMB_EBADH] = "handle not held",
    [XOMB_ENOTHELD] = "page not held",
    [XOMB_EPERM] = "would amplify rights",
    [XOMB_EEXIST] = "already exists",
    [XOMB_ENOTABLE] = "no page table covers the address",
    [XOMB_EBUSY] = "frame shared or busy",
    [XOMB_ETYPE] = "frame of the wrong type",
    [XOMB_ERANGE] = "count or range too large",
};

#define NERR ((long)(sizeof(names) / sizeof(names[0])))

const char *xomb_errname(long rv)
{
    if (rv >= 0)
        return names[0];
    if (rv == -LIBOS_ENOMEM)
        return "ENOMEM";
    if (-rv < NERR && names[-rv])
        return names[-rv];
    return "E?";
}

const char *xomb_strerror(long rv)
{
    if (rv >= 0)
        return sentences[0];
    if (rv == -LIBOS_ENOMEM)
        return "out of memory (pool empty)";
    if (-rv < NERR && sentences[-rv])
        return sentences[-rv];
    return "unknown error";
}
