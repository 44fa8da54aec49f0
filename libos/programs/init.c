/* init: the root libOS.
 *
 * The VMM built our address space before boot: our image, stack, the boot
 * information, the console, the platform page, the boot archive, and every
 * free frame of the machine in our window.  We own all memory; the kernel
 * only checks what we do with it.
 *
 * Interactive (run_mode 0): banner, boot timer, the shell; when the shell
 * exits we power off with its status.  Run mode (run_mode 1): run the
 * command line through `xsh -c` and power off with its status.
 */
#include "xomb.h"
#include "nic.h"

static const char *host_name(uint64_t host)
{
    switch (host) {
    case XOMB_HOST_VMX: return "KVM";
    case XOMB_HOST_PVM: return "KVM (PVM)";
    case XOMB_HOST_QEMU: return "QEMU";
    default: return "?";
    }
}

/* Frames come home zeroed: take one, dirty it, release it, look at it in
 * the window again.  Only the root can see a frame after it went home, so
 * we check it here and tell our children (sysconf reports it). */
static uint64_t check_zeroing(void)
{
    uint64_t src = pool_find(XOMB_MAP_W);
    if (!src || page_alloc_at(XOMB_AS_SELF, XOMB_SCRATCH_VA, XOMB_MAP_W) < 0)
        return 0;
    uint64_t pfn = vm_pfn(XOMB_SCRATCH_VA);
    memset((void *)XOMB_SCRATCH_VA, 0xA5, PAGE_SIZE);
    struct xomb_result r = xomb_release(XOMB_AS_SELF, XOMB_SCRATCH_VA, 1);
    uint64_t home = XOMB_WINDOW_VA + pfn * PAGE_SIZE;
    int ok = r.rv == 0 && !vm_mapped(XOMB_SCRATCH_VA) && vm_mapped(home)
             && ft_type(pfn) == XOMB_FT_DATA && ft_count(pfn) == 1;
    for (uint64_t i = 0; ok && i < PAGE_SIZE; i += 8)
        ok = *(volatile uint64_t *)(home + i) == 0;
    if (!ok)
        printf("[init] warning: a released frame did not come home zeroed (%s)\n",
               xomb_errname(r.rv));
    return ARGS_F_ZERO_CHECKED | (ok ? ARGS_F_ZERO_OK : 0);
}

/* Bench mode: the command line is bench's arguments.  bench is the one
 * child that gets our platform page (shared, writable) to mark its phases
 * for the VMM (XOMB_PLAT_MARK); nothing else ever sees that page. */
static int run_bench(char *cmd)
{
    char *bargv[40];
    int n = 0;
    bargv[n++] = "bench";
    for (char *p = cmd; *p && n < 39;) {
        while (*p == ' ')
            *p++ = 0;
        if (!*p)
            break;
        bargv[n++] = p;
        while (*p && *p != ' ')
            p++;
    }
    bargv[n] = 0;
    long h = spawn("bench", bargv);
    long r = h < 0 ? h : mem_ensure_tables(h, XOMB_PLATFORM_VA);
    if (r >= 0)
        r = xomb_map(h, XOMB_PLATFORM_VA, XOMB_AS_SELF, XOMB_PLATFORM_VA, 1, XOMB_MAP_W).rv;
    if (r < 0) {
        printf("[init] cannot start bench: %s\n", h < 0 ? spawn_error() : xomb_errname(r));
        return 127;
    }
    return wait_status(h, 0, 0);
}

int main(int argc, char **argv)
{
    const struct xomb_bootinfo *bi = libos_bootinfo;
    const char *cmdline = (const char *)bi + XOMB_BOOTINFO_CMDLINE;
    char cmd[XOMB_CMDLINE_MAX];
    strncpy(cmd, cmdline, sizeof(cmd) - 1);
    cmd[sizeof(cmd) - 1] = 0;

    libos_arg_flags = check_zeroing();

    if (bi->run_mode == XOMB_RUN_BENCH)
        return run_bench(cmd);
    if (bi->run_mode == 1) {
        char *xargv[] = { "xsh", "-c", cmd, 0 };
        long h = spawn("xsh", xargv);
        if (h < 0) {
            printf("[init] cannot start xsh: %s\n", spawn_error());
            return 127;
        }
        disk_grant_all(h);              /* the shell gets the disk VFs (docs/DEVICES.md) */
        nic_grant_all(h);               /* ... and the NIC VFs, to lend to its programs */
        return wait_status(h, 0, 0);    /* no need to take it apart: we power off */
    }

    printf("XOmB exokernel on %s: %lu MiB RAM, %lu MiB free, 5 system calls\n",
           host_name(bi->host), bi->ram_bytes >> 20, (pool_free_pages() * PAGE_SIZE) >> 20);
    char *xargv[] = { "xsh", 0 };
    long h = spawn("xsh", xargv);
    if (h < 0) {
        printf("[init] cannot start xsh: %s\n", spawn_error());
        return 127;
    }
    disk_grant_all(h);
    nic_grant_all(h);
    platform_boot_timer();
    int status = wait_status(h, 0, 0);
    printf("[init] shell exited (status %d), powering off\n", status);
    return status;
}
