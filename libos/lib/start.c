/* libos_start: from the START upcall to main(), and exit().
 *
 * init (the root) finds the boot information page at XOMB_BOOTINFO_VA; a
 * child finds the argv page its parent wrote at XOMB_ARGS_VA.  We tell them
 * apart by which page is mapped (read through the self-map).
 */
#include "libos.h"
#include "args.h"
#include "console.h"
#include "mem.h"
#include "platform.h"
#include "process.h"
#include "vm.h"

/* crt0 loads rsp from here (the header's value is too wide for an
 * assembler immediate with a ULL suffix). */
const uint64_t libos_stack_top = XOMB_STACK_TOP;

int libos_host;
int libos_is_root;
const char *libos_name = "?";
uint64_t libos_tsc_khz;
uint64_t libos_initrd_size;
uint64_t libos_arg_flags;
uint64_t libos_ncpus = 1;
uint64_t libos_home_cpu;            /* set by crt0 from r9 */
const struct xomb_bootinfo *libos_bootinfo;

static char *argv_vec[XARGS_MAX + 1];
static char root_name[] = "init";

__attribute__((noreturn)) void libos_start(void);

void libos_start(void)
{
    int argc = 0;
    const struct xomb_bootinfo *bi = (const struct xomb_bootinfo *)XOMB_BOOTINFO_VA;
    const struct xomb_args *a = (const struct xomb_args *)XOMB_ARGS_VA;

    if (vm_mapped(XOMB_ARGS_VA) && a->magic == XARGS_MAGIC) {
        libos_host = (int)a->host;
        libos_tsc_khz = a->tsc_khz;
        libos_initrd_size = a->initrd_size;
        libos_arg_flags = a->flags;
        libos_ncpus = a->ncpus ? a->ncpus : 1;
        argc = a->argc > XARGS_MAX ? XARGS_MAX : (int)a->argc;
        for (int i = 0; i < argc; i++)
            argv_vec[i] = (char *)a + a->argv_off[i];
        mem_init_child(a->pool_pages);
    } else if (vm_mapped(XOMB_BOOTINFO_VA) && bi->magic == XOMB_BOOTINFO_MAGIC) {
        libos_is_root = 1;
        libos_bootinfo = bi;
        libos_ncpus = bi->ncpus ? bi->ncpus : 1;
        libos_host = (int)bi->host;
        libos_tsc_khz = bi->tsc_khz;
        libos_initrd_size = bi->initrd_size;
        argv_vec[argc++] = root_name;
        mem_init_root(bi);
    } else {
        /* Nobody told us anything: there is no console to complain on. */
        exit(126);
    }
    argv_vec[argc] = 0;
    if (argc > 0)
        libos_name = argv_vec[0];
    exit(main(argc, argv_vec));
}

void exit(int status)
{
    process_exiting = 1;        /* our other CPUs leave (thread.c) */
    console_flush();
    if (libos_is_root)
        platform_poweroff((unsigned)status);
    mem_exit();         /* hand heap pages back to the pool the parent reclaims */
    for (;;) {
        xomb_yield(XOMB_AS_PARENT, XOMB_UP_EXIT, (uint64_t)(unsigned)status, 0);
        /* Only an error returns here; there is nothing else to do. */
    }
}
