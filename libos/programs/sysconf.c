/* sysconf: conformance of the kernel to docs/SYSCALLS.md.
 *
 * One line per check, "PASS name" or "FAIL name: why" (and "SKIP name: why"
 * where this machine cannot show it), then "sysconf: N passed, M failed";
 * the exit status is M.  Checks that must kill a process run in a child
 * (this same program with --role NAME) and look at how it ended.
 *
 * Every test works in its own region, TEST_VA (PML4 slot 4), created by the
 * CREATE tests, so nothing else of ours is disturbed.
 */
#include "xomb.h"

#define TEST_VA   0x20000000000UL       /* 2 TiB: PML4 entry 4 */
#define OTHER_VA  0x28000000000UL       /* PML4 entry 5: never created */
#define GiB (1UL << 30)
#define MiB2 (1UL << 21)
#define P(i) (TEST_VA + (uint64_t)(i) * PAGE_SIZE)
#define DEMAND_VA (TEST_VA + 0x100000)
#define MAILBOX_VA 0x9000UL             /* in a child: a page we share with it */
#define MAILBOX_MAGIC 0x584f424c49414dULL
#define ROLE_POOL 64

static int npass, nfail, nskip;

static void pass(const char *name) { printf("PASS %s\n", name); npass++; }

__attribute__((format(printf, 2, 3)))
static void fail(const char *name, const char *fmt, ...)
{
    va_list ap;
    printf("FAIL %s: ", name);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    nfail++;
}

static void skip(const char *name, const char *why)
{
    printf("SKIP %s: %s\n", name, why);
    nskip++;
}

static void check(const char *name, int ok, const char *why)
{
    if (ok) pass(name);
    else fail(name, "%s", why);
}

/* A call's result against the expected one (0 or -XOMB_E...). */
static int expect(const char *name, long got, long want)
{
    if (got == want) {
        pass(name);
        return 1;
    }
    fail(name, "got %s (%ld), want %s", xomb_errname(got), got, xomb_errname(want));
    return 0;
}

static int expect2(const char *name, long got, long want1, long want2)
{
    if (got == want1 || got == want2) {
        pass(name);
        return 1;
    }
    fail(name, "got %s (%ld), want %s or %s", xomb_errname(got), got,
         xomb_errname(want1), xomb_errname(want2));
    return 0;
}

/* A donor from our pool; note it consumed if the kernel took it. */
static uint64_t donor(void) { return pool_find(XOMB_MAP_W); }
static long create_with(long as, uint64_t va, long level, uint64_t d)
{
    long r = xomb_create(as, va, level, d);
    if (r == 0)
        pool_consumed(d);
    return r;
}
static long create(long as, uint64_t va, long level) { return create_with(as, va, level, donor()); }
static long as_create(uint64_t d, uint64_t entry, long slot)
{
    long r = xomb_as_create(d, entry, slot);
    if (r >= 0)
        pool_consumed(d);
    return r;
}

/* ------------------------------------------------------------------ */

static void test_create(void)
{
    uint64_t d = donor(), pfn = vm_pfn(d);
    long r = create_with(XOMB_AS_SELF, TEST_VA, 3, d);
    if (expect("create.level3", r, 0)) {
        check("create.level3.installed", (*vm_pml4e(TEST_VA) & XOMB_PTE_P) != 0,
              "PML4 entry not present in the self-map");
        check("create.donor_unmapped", !vm_mapped(d), "donor still mapped in the caller");
        check("create.donor_retyped", ft_type(pfn) == XOMB_FT_TABLE,
              "donor frame is not typed TABLE");
        check("create.entry_is_donor", PTE_ADDR_OF(*vm_pml4e(TEST_VA)) >> 12 == pfn,
              "PML4 entry does not point at the donated frame");
    }
    if (expect("create.level2", create(XOMB_AS_SELF, TEST_VA, 2), 0))
        check("create.level2.installed", (*vm_pdpte(TEST_VA) & XOMB_PTE_P) != 0,
              "PDPT entry not present");
    if (expect("create.level1", create(XOMB_AS_SELF, TEST_VA, 1), 0))
        check("create.level1.installed", (*vm_pde(TEST_VA) & XOMB_PTE_P) != 0,
              "PD entry not present");
    expect("create.region_exists", create(XOMB_AS_SELF, TEST_VA, 1), -XOMB_EEXIST);
    expect("create.region_exists.level3", create(XOMB_AS_SELF, TEST_VA, 3), -XOMB_EEXIST);
    expect("create.misaligned.level1", create(XOMB_AS_SELF, TEST_VA + 0x1000, 1), -XOMB_EINVAL);
    expect("create.misaligned.level2", create(XOMB_AS_SELF, TEST_VA + MiB2, 2), -XOMB_EINVAL);
    expect("create.misaligned.level3", create(XOMB_AS_SELF, TEST_VA + GiB, 3), -XOMB_EINVAL);
    expect("create.kernel_half", create(XOMB_AS_SELF, 0xFFFF800000000000UL, 3), -XOMB_EINVAL);
    expect("create.non_canonical", create(XOMB_AS_SELF, XOMB_USER_TOP, 3), -XOMB_EINVAL);
    expect("create.level0", create(XOMB_AS_SELF, TEST_VA, 0), -XOMB_EINVAL);
    expect("create.level4", create(XOMB_AS_SELF, TEST_VA, 4), -XOMB_EINVAL);
    expect("create.notable.level1", create(XOMB_AS_SELF, TEST_VA + GiB, 1), -XOMB_ENOTABLE);
    expect("create.notable.level2", create(XOMB_AS_SELF, OTHER_VA, 2), -XOMB_ENOTABLE);
    /* a second PT, to have room for everything below */
    expect("create.level1.second", create(XOMB_AS_SELF, TEST_VA + MiB2, 1), 0);

    expect("create.donor_not_mapped", create_with(XOMB_AS_SELF, TEST_VA + 2 * MiB2, 1, P(5)),
           -XOMB_ENOTHELD);
    /* read-only donor, count 1: move a page to P(2) without W */
    page_alloc_at(XOMB_AS_SELF, P(1), XOMB_MAP_W);
    xomb_map(XOMB_AS_SELF, P(2), XOMB_AS_SELF, P(1), 1, XOMB_MAP_MOVE);
    if (vm_mapped(P(2)) && !pte_writable(vm_pte(P(2))))
        expect("create.donor_readonly", create_with(XOMB_AS_SELF, TEST_VA + 2 * MiB2, 1, P(2)),
               -XOMB_ENOTHELD);
    else
        fail("create.donor_readonly", "could not make a read-only page");
    /* shared donor: P(3) also at P(4) */
    page_alloc_at(XOMB_AS_SELF, P(3), XOMB_MAP_W);
    xomb_map(XOMB_AS_SELF, P(4), XOMB_AS_SELF, P(3), 1, XOMB_MAP_W);
    if (ft_count(vm_pfn(P(3))) == 2)
        expect("create.donor_shared", create_with(XOMB_AS_SELF, TEST_VA + 2 * MiB2, 1, P(3)),
               -XOMB_EBUSY);
    else
        fail("create.donor_shared", "sharing did not raise the count to 2");
    /* device page donor: the console doorbell */
    if (vm_mapped(XOMB_CONSOLE_BELL_VA)) {
        uint64_t bell = vm_pfn(XOMB_CONSOLE_BELL_VA);
        long rv = create_with(XOMB_AS_SELF, TEST_VA + 2 * MiB2, 1, XOMB_CONSOLE_BELL_VA);
        if (ft_type(bell) != XOMB_FT_DEVICE)
            fail("create.donor_device", "doorbell frame is not typed DEVICE");
        else if (ft_count(bell) == 1)
            expect("create.donor_device", rv, -XOMB_ETYPE);
        else        /* shared with our parents too: either rule refuses it */
            expect2("create.donor_device", rv, -XOMB_ETYPE, -XOMB_EBUSY);
    } else {
        skip("create.donor_device", "no device page mapped here (QEMU platform)");
    }
    if (libos_initrd_size)
        expect("create.donor_readonly_archive",
               create_with(XOMB_AS_SELF, TEST_VA + 2 * MiB2, 1, XOMB_INITRD_VA), -XOMB_ENOTHELD);
    expect("create.bad_handle", create(77, TEST_VA, 3), -XOMB_EBADH);
    expect("create.handle_out_of_range", create(1000, TEST_VA, 3), -XOMB_EBADH);
    expect("create.parent_refused", create(XOMB_AS_PARENT, TEST_VA, 3), -XOMB_EBADH);
}

/* ------------------------------------------------------------------ */

static void test_map(long child)
{
    const uint64_t A = P(16), B = P(17), C = P(18), RO = P(19), E = P(20);
    if (page_alloc_at(XOMB_AS_SELF, A, XOMB_MAP_W) < 0) {
        fail("map.setup", "no page");
        return;
    }
    uint64_t pfn = vm_pfn(A);
    *(volatile uint64_t *)A = 0x1122334455667788ULL;

    struct xomb_result m = xomb_map(XOMB_AS_SELF, B, XOMB_AS_SELF, A, 1, XOMB_MAP_W);
    if (expect("map.share", m.rv, 0)) {
        check("map.share.same_frame", vm_pfn(B) == pfn && *(volatile uint64_t *)B == 0x1122334455667788ULL,
              "the second mapping does not show the same frame");
        check("map.share.count", ft_count(pfn) == 2, "frame count is not 2 after sharing");
        check("map.share.done", m.done == 1, "rdx is not 1");
    }
    m = xomb_map(XOMB_AS_SELF, C, XOMB_AS_SELF, B, 1, XOMB_MAP_W | XOMB_MAP_MOVE);
    if (expect("map.move", m.rv, 0)) {
        check("map.move.source_gone", !vm_mapped(B), "source still mapped");
        check("map.move.same_frame", vm_pfn(C) == pfn, "destination is another frame");
        check("map.move.count", ft_count(pfn) == 2, "count changed by a move");
    }
    m = xomb_map(XOMB_AS_SELF, RO, XOMB_AS_SELF, A, 1, 0);
    if (expect("map.readonly", m.rv, 0)) {
        uint64_t e = vm_pte(RO);
        check("map.readonly.rights", !pte_writable(e) && !pte_executable(e),
              "rights 0 gave a writable or executable entry");
    }
    expect("map.amplify_w", xomb_map(XOMB_AS_SELF, E, XOMB_AS_SELF, RO, 1, XOMB_MAP_W).rv, -XOMB_EPERM);
    expect("map.amplify_x", xomb_map(XOMB_AS_SELF, E, XOMB_AS_SELF, RO, 1, XOMB_MAP_X).rv, -XOMB_EPERM);
    if (!pte_executable(vm_pte(A)))
        expect("map.amplify_x.writable_src",
               xomb_map(XOMB_AS_SELF, E, XOMB_AS_SELF, A, 1, XOMB_MAP_X).rv, -XOMB_EPERM);
    expect("map.src_not_held", xomb_map(XOMB_AS_SELF, E, XOMB_AS_SELF, P(40), 1, 0).rv, -XOMB_ENOTHELD);
    expect("map.dst_exists", xomb_map(XOMB_AS_SELF, C, XOMB_AS_SELF, A, 1, 0).rv, -XOMB_EEXIST);
    expect("map.no_table", xomb_map(XOMB_AS_SELF, TEST_VA + GiB, XOMB_AS_SELF, A, 1, 0).rv,
           -XOMB_ENOTABLE);
    expect("map.bad_flags", xomb_map(XOMB_AS_SELF, E, XOMB_AS_SELF, A, 1, 1UL << 5).rv, -XOMB_EINVAL);
    expect("map.bad_flags.present_bit", xomb_map(XOMB_AS_SELF, E, XOMB_AS_SELF, A, 1, 1).rv, -XOMB_EINVAL);
    /* SYSCALLS.md lists kernel-half addresses under EINVAL, and ranges that
     * leave user space under ERANGE: a kernel-half page is both. */
    expect2("map.kernel_half.dst", xomb_map(XOMB_AS_SELF, XOMB_KBASE, XOMB_AS_SELF, A, 1, 0).rv,
            -XOMB_EINVAL, -XOMB_ERANGE);
    expect2("map.kernel_half.src_selfmap",
            xomb_map(XOMB_AS_SELF, E, XOMB_AS_SELF, XOMB_SELF_PML4, 1, 0).rv,
            -XOMB_EINVAL, -XOMB_ERANGE);
    expect("map.misaligned", xomb_map(XOMB_AS_SELF, E + 8, XOMB_AS_SELF, A, 1, 0).rv, -XOMB_EINVAL);
    expect("map.too_many", xomb_map(XOMB_AS_SELF, E, XOMB_AS_SELF, A, XOMB_MAP_MAX_PAGES + 1, 0).rv,
           -XOMB_ERANGE);
    expect("map.range_leaves_user",
           xomb_map(XOMB_AS_SELF, USER_LIMIT - PAGE_SIZE, XOMB_AS_SELF, A, 2, 0).rv, -XOMB_ERANGE);
    expect("map.src_parent_refused", xomb_map(XOMB_AS_SELF, E, XOMB_AS_PARENT, XOMB_PROGRAM_VA, 1, 0).rv,
           -XOMB_EBADH);
    expect("map.bad_handle", xomb_map(77, XOMB_PROGRAM_VA, XOMB_AS_SELF, A, 1, 0).rv, -XOMB_EBADH);
    expect("map.into_window", xomb_map(XOMB_AS_SELF, XOMB_WINDOW_VA + 0x100000, XOMB_AS_SELF, A, 1, 0).rv,
           -XOMB_EINVAL);
    m = xomb_map(XOMB_AS_SELF, 0, XOMB_AS_SELF, 0, 0, 0);
    check("map.null_call", m.rv == 0 && m.done == 0, "n = 0 did not return 0");
    expect("map.null_call.bad_handle", xomb_map(77, 0, XOMB_AS_SELF, 0, 0, 0).rv, -XOMB_EBADH);

    /* partial completion: P(24) mapped, P(25) not, P(26) mapped */
    page_alloc_at(XOMB_AS_SELF, P(24), XOMB_MAP_W);
    page_alloc_at(XOMB_AS_SELF, P(26), XOMB_MAP_W);
    m = xomb_map(XOMB_AS_SELF, P(32), XOMB_AS_SELF, P(24), 3, XOMB_MAP_W);
    if (m.rv == -XOMB_ENOTHELD && m.done == 1 && vm_mapped(P(32)) && !vm_mapped(P(33)) && !vm_mapped(P(34)))
        pass("map.partial");
    else
        fail("map.partial", "got %s, %lu done (want ENOTHELD, 1 done, only the first page mapped)",
             xomb_errname(m.rv), m.done);
    m = xomb_map(XOMB_AS_SELF, P(48), XOMB_AS_SELF, P(24), 1, 0);
    m = xomb_map(XOMB_AS_SELF, P(49), XOMB_AS_SELF, P(26), 1, 0);
    m = xomb_map(XOMB_AS_SELF, P(64), XOMB_AS_SELF, P(48), 2, XOMB_MAP_MOVE);
    check("map.multi_page", m.rv == 0 && m.done == 2 && vm_mapped(P(65)) && !vm_mapped(P(49)),
          "moving 2 pages did not move both");

    /* into and out of a child */
    if (child > 0) {
        long r = 0;
        for (int lv = 3; lv >= 1 && r == 0; lv--)
            r = create(child, 0, lv);
        expect("create.in_child", r, 0);
        uint32_t before = ft_count(pfn);
        m = xomb_map(child, 0x1000, XOMB_AS_SELF, A, 1, XOMB_MAP_W);
        if (expect("map.into_child", m.rv, 0))
            check("map.into_child.count", ft_count(pfn) == before + 1, "count did not rise");
        expect("map.from_child", xomb_map(XOMB_AS_SELF, P(21), child, 0x1000, 1, 0).rv, 0);
        expect("map.child_dst_exists", xomb_map(child, 0x1000, XOMB_AS_SELF, A, 1, 0).rv, -XOMB_EEXIST);
        expect("map.child_no_table",
               xomb_map(child, TEST_VA, XOMB_AS_SELF, A, 1, 0).rv, -XOMB_ENOTABLE);
        expect("map.child_window", xomb_map(child, XOMB_WINDOW_VA, XOMB_AS_SELF, A, 1, 0).rv,
               -XOMB_EINVAL);
    }
}

/* ------------------------------------------------------------------ */

static long test_as_create(void)
{
    long s = slot_free();
    if (s < 0) {
        fail("as_create", "no free slot");
        return -1;
    }
    uint64_t d = donor(), pfn = vm_pfn(d);
    long r = as_create(d, XOMB_PROGRAM_VA, s);
    if (!expect("as_create.returns_handle", r, s))
        return -1;
    uint64_t root = vm_handle_root((unsigned)s);
    check("as_create.slot_visible", root == pfn << 12, "our PML4 slot does not name the donated frame");
    check("as_create.frame_is_root", ft_type(pfn) == XOMB_FT_ROOT, "frame table type is not ROOT");
    check("as_create.donor_unmapped", !vm_mapped(d), "donor still mapped");
    expect("as_create.slot_in_use", as_create(donor(), XOMB_PROGRAM_VA, s), -XOMB_EEXIST);
    expect("as_create.slot0", as_create(donor(), XOMB_PROGRAM_VA, 0), -XOMB_EINVAL);
    expect("as_create.slot1", as_create(donor(), XOMB_PROGRAM_VA, 1), -XOMB_EINVAL);
    expect("as_create.slot128", as_create(donor(), XOMB_PROGRAM_VA, 128), -XOMB_EINVAL);
    expect("as_create.slot_negative", as_create(donor(), XOMB_PROGRAM_VA, -1), -XOMB_EINVAL);
    long s2 = slot_free() == s ? s + 1 : slot_free();
    for (long k = s + 1; k < XOMB_MAX_HANDLES; k++)
        if (!vm_handle_root((unsigned)k)) { s2 = k; break; }
    expect("as_create.entry_kernel", as_create(donor(), XOMB_KBASE, s2), -XOMB_EINVAL);
    expect("as_create.entry_non_canonical", as_create(donor(), XOMB_USER_TOP, s2), -XOMB_EINVAL);
    expect("as_create.donor_not_mapped", as_create(P(41), XOMB_PROGRAM_VA, s2), -XOMB_ENOTHELD);
    /* P(3) is shared (also at P(4)), P(2) read-only: see test_create */
    expect("as_create.donor_shared", as_create(P(3), XOMB_PROGRAM_VA, s2), -XOMB_EBUSY);
    expect("as_create.donor_readonly", as_create(P(2), XOMB_PROGRAM_VA, s2), -XOMB_ENOTHELD);
    proc_adopt(s, "bare", 0);
    return s;
}

/* ------------------------------------------------------------------ */

static void test_yield(long bare)
{
    expect("yield.bad_handle", xomb_yield(77, XOMB_UP_START, 0, 0), -XOMB_EBADH);
    if (bare > 0) {
        for (uint64_t up = 0; up < XOMB_UP_USER_MIN; up++) {
            char name[48];
            snprintf(name, sizeof(name), "yield.kernel_upcall_%lu", up);
            long r;
            if (proc_run(bare, up, 0, 0, &r))
                fail(name, "the kernel let us send upcall %lu", up);
            else
                expect(name, r, -XOMB_EINVAL);
        }
    }
    expect("yield.self_resume", yield_and_resume(XOMB_AS_SELF, XOMB_UP_RESUME, 0, 0), 0);

    struct spawn_opts o = { ROLE_POOL, 0 };
    char *argv1[] = { "sysconf", "--role", "exit42", 0 };
    long h = spawn_with("sysconf", argv1, &o);
    if (h < 0) {
        fail("yield.round_trip", "spawn: %s", spawn_error());
    } else {
        int st = wait(h);
        if (st == 42) pass("yield.round_trip");
        else fail("yield.round_trip", "child exit status %d, want 42", st);
    }
    char *argv2[] = { "sysconf", "--role", "resume", 0 };
    h = spawn_with("sysconf", argv2, &o);
    if (h < 0) {
        fail("yield.resume_round_trip", "spawn: %s", spawn_error());
    } else {
        int st = wait(h);
        if (st == 7) pass("yield.resume_round_trip");
        else fail("yield.resume_round_trip", "child exit status %d, want 7", st);
    }
}

/* ------------------------------------------------------------------ */

static void test_release(long bare)
{
    const uint64_t A = P(80);
    page_alloc_at(XOMB_AS_SELF, A, XOMB_MAP_W);
    uint64_t pfn = vm_pfn(A);
    struct xomb_result r = xomb_release(XOMB_AS_SELF, A, 1);
    if (expect("release.unmap", r.rv, 0)) {
        check("release.unmap.gone", !vm_mapped(A), "page still in the self-map");
        check("release.unmap.done", r.done == 1, "rdx is not 1");
        check("release.goes_home", ft_type(pfn) == XOMB_FT_DATA && ft_count(pfn) == 1,
              "freed frame is not back home (DATA, count 1 in the root's window)");
    }
    page_alloc_at(XOMB_AS_SELF, A, XOMB_MAP_W);
    pfn = vm_pfn(A);
    *(volatile uint64_t *)A = 0xfeed;
    xomb_map(XOMB_AS_SELF, P(81), XOMB_AS_SELF, A, 1, XOMB_MAP_W);
    uint32_t before = ft_count(pfn);
    r = xomb_release(XOMB_AS_SELF, A, 1);
    check("release.count_drops", r.rv == 0 && ft_count(pfn) == before - 1,
          "count did not drop by one");
    check("release.shared_survives", vm_mapped(P(81)) && *(volatile uint64_t *)P(81) == 0xfeed,
          "the other mapping lost its data");
    expect("release.skips_unmapped", xomb_release(XOMB_AS_SELF, P(90), 4).rv, 0);
    expect("release.parent_refused", xomb_release(XOMB_AS_PARENT, 0, 0).rv, -XOMB_EBADH);
    expect("release.bad_handle", xomb_release(77, 0, 0).rv, -XOMB_EBADH);
    expect("release.misaligned", xomb_release(XOMB_AS_SELF, P(81) + 4, 1).rv, -XOMB_EINVAL);
    expect2("release.kernel_half", xomb_release(XOMB_AS_SELF, XOMB_KBASE, 1).rv,
            -XOMB_EINVAL, -XOMB_ERANGE);
    expect("release.too_many", xomb_release(XOMB_AS_SELF, P(81), XOMB_MAP_MAX_PAGES + 1).rv, -XOMB_ERANGE);
    expect("release.range_leaves_user",
           xomb_release(XOMB_AS_SELF, USER_LIMIT - PAGE_SIZE, 2).rv, -XOMB_ERANGE);

    if (libos_arg_flags & ARGS_F_ZERO_CHECKED)
        check("release.zeroed (checked by init at boot)", libos_arg_flags & ARGS_F_ZERO_OK,
              "init saw a frame come home with data in it");
    else
        skip("release.zeroed", "only the root can see a frame at home; init did not check");

    if (bare > 0) {
        uint64_t root = vm_handle_root((unsigned)bare) >> 12;
        r = xomb_release(bare, 0, 0);
        if (expect("release.destroy", r.rv, 0)) {
            check("release.destroy.slot_cleared", vm_handle_root((unsigned)bare) == 0,
                  "our slot still names the child");
            check("release.destroy.root_home", ft_type(root) == XOMB_FT_DATA && ft_count(root) == 1,
                  "the child's root frame did not return home");
            check("release.destroy.pages_returned", ft_count(pfn) == 1,
                  "the page the child held is still counted");
        }
        proc_destroy(bare);     /* forget it (the slot is empty: EBADH is fine) */
    }
}

/* A child that makes a grandchild, gives it a page and reports both. */
static void test_destroy_tree(void)
{
    struct spawn_opts o = { ROLE_POOL, 0 };
    char *argv[] = { "sysconf", "--role", "grandparent", 0 };
    long h = spawn_with("sysconf", argv, &o);
    if (h < 0) {
        fail("release.destroy_tree", "spawn: %s", spawn_error());
        return;
    }
    const uint64_t M = P(100);
    page_alloc_at(XOMB_AS_SELF, M, XOMB_MAP_W);
    memset((void *)M, 0, PAGE_SIZE);
    mem_ensure_tables(h, MAILBOX_VA);
    long r = xomb_map(h, MAILBOX_VA, XOMB_AS_SELF, M, 1, XOMB_MAP_W).rv;
    if (r < 0) {
        fail("release.destroy_tree", "sharing the mailbox: %s", xomb_errname(r));
        proc_destroy(h);
        return;
    }
    struct proc_status st;
    wait_status(h, &st, 0);
    volatile uint64_t *box = (volatile uint64_t *)M;
    if (st.status != 0 || box[0] != MAILBOX_MAGIC) {
        fail("release.destroy_tree", "grandparent child failed (status %d)", st.status);
        proc_destroy(h);
        return;
    }
    uint64_t gc_root = box[1] >> 12, gc_page = box[2], c_root = box[3] >> 12;
    uint32_t c_held = ft_count(c_root);
    check("as.child_counts_pages", ft_type(c_root) == XOMB_FT_ROOT && c_held > 0,
          "the child's root frame does not count its pages");
    check("as.grandchild_alive", ft_type(gc_root) == XOMB_FT_ROOT && ft_type(gc_page) == XOMB_FT_DATA,
          "the grandchild is not there before the destroy");
    proc_destroy(h);
    check("release.destroy_tree.grandchild_root_home",
          ft_type(gc_root) == XOMB_FT_DATA && ft_count(gc_root) == 1,
          "the grandchild's root did not return home");
    check("release.destroy_tree.grandchild_page_home",
          ft_type(gc_page) == XOMB_FT_DATA && ft_count(gc_page) == 1,
          "the grandchild's page did not return home");
    check("release.destroy_tree.child_root_home",
          ft_type(c_root) == XOMB_FT_DATA && ft_count(c_root) == 1,
          "the child's root did not return home");
    check("release.destroy_tree.mailbox", ft_count(vm_pfn(M)) == 1,
          "the page shared with the child is still counted twice");
}

/* ------------------------------------------------------------------ */

static void test_tables(void)
{
    uint64_t root = vm_self_root();
    check("selfmap.root", ft_type(root >> 12) == XOMB_FT_ROOT,
          "PML4[510] does not point at a ROOT frame");
    uint64_t e = vm_pml4_slot(XOMB_PML4_SELF);
    check("selfmap.readonly_entry", (e & XOMB_PTE_P) && !(e & XOMB_PTE_W),
          "the self-map entry is writable");
    check("tables.typed", ft_type(PTE_ADDR_OF(*vm_pml4e(TEST_VA)) >> 12) == XOMB_FT_TABLE,
          "a page-table frame is not typed TABLE");
    /* No leaf of ours maps a table or a root: walk every page we map. */
    uint64_t bad = 0, pages = 0;
    for (uint64_t va = 0; va < USER_LIMIT;) {
        int depth = vm_table_depth(va);
        if (depth < 3) {
            uint64_t span = depth == 0 ? (1UL << 39) : depth == 1 ? GiB : MiB2;
            va = (va & ~(span - 1)) + span;
            continue;
        }
        uint64_t pte = vm_pte(va);
        if (pte) {
            unsigned t = ft_type(PTE_ADDR_OF(pte) >> 12);
            pages++;
            if (t != XOMB_FT_DATA && t != XOMB_FT_DEVICE && !bad)
                bad = va;
        }
        va += PAGE_SIZE;
    }
    if (bad)
        fail("tables.never_mapped", "0x%lx maps a frame of type %s", bad,
             ft_type_name(ft_type(vm_pfn(bad))));
    else
        pass("tables.never_mapped");
    check("as.self_count", ft_count(root >> 12) >= pages,
          "our root counts fewer pages than we map");

    struct spawn_opts o = { ROLE_POOL, 0 };
    static const struct { const char *role, *name; } deaths[] = {
        { "write-selfmap", "selfmap.write_faults" },
        { "write-pagetable", "tables.write_faults" },
        { "write-frames", "frames.write_faults" },
        { "write-kernel", "kernel.write_faults" },
    };
    for (unsigned i = 0; i < sizeof(deaths) / sizeof(deaths[0]); i++) {
        char *argv[] = { "sysconf", "--role", (char *)deaths[i].role, 0 };
        long h = spawn_with("sysconf", argv, &o);
        if (h < 0) {
            fail(deaths[i].name, "spawn: %s", spawn_error());
            continue;
        }
        struct proc_status st;
        wait_status(h, &st, 1);
        /* a FAULT upcall the child's libOS declines (exit 128 + 14), or the
         * kernel's CHILD_ERROR: either way the write did not happen */
        if ((st.died && st.vector == 14) || (!st.died && st.status == 128 + 14))
            pass(deaths[i].name);
        else
            fail(deaths[i].name, "child %s with status %d (want a #PF death)",
                 st.died ? "died" : "exited", st.status);
    }
}

/* ------------------------------------------------------------------ */

static volatile int sys_seen, sys_regs_ok;

static int on_syscall(struct xomb_frame *f)
{
    sys_seen++;
    if (f->vector != XOMB_VEC_SYSCALL)
        return 0;
    if (f->rax == XOMB_NSYSCALLS) {     /* the first number that is not a call */
        f->rax = 0;
        return 1;
    }
    if (f->rax != 1234567)
        return 0;
    sys_regs_ok = f->rdi == 11 && f->rsi == 22 && f->rdx == 33 && f->r10 == 44 &&
                  f->r8 == 55 && f->r9 == 66;
    f->rax = 4242;
    f->rdx = 17;
    return 1;
}

static volatile int faults_seen;
static volatile uint64_t fault_cr2;

static int on_fault(struct xomb_frame *f)
{
    if (f->vector != 14 || f->cr2 < DEMAND_VA || f->cr2 >= DEMAND_VA + 16 * PAGE_SIZE)
        return 0;
    faults_seen++;
    fault_cr2 = f->cr2;
    return page_alloc_at(XOMB_AS_SELF, f->cr2 & PAGE_MASK, XOMB_MAP_W) == 0;
}

static void test_upcalls(void)
{
    set_syscall_handler(on_syscall);
    struct xomb_result r = xomb_syscall6(1234567, 11, 22, 33, 44, 55, 66);
    check("syscall.reflected", sys_seen == 1, "no SYSCALL upcall");
    check("syscall.reflected.registers", sys_regs_ok, "frame does not hold the arguments");
    check("syscall.reflected.returns", r.rv == 4242 && r.done == 17,
          "the handler's rax/rdx did not come back");
    r = xomb_syscall6(XOMB_NSYSCALLS, 11, 22, 33, 44, 55, 66);  /* first unused number */
    check("syscall.reflected.first_unused", sys_seen == 2, "number NSYSCALLS was not reflected");
    set_syscall_handler(0);

    set_fault_handler(on_fault);
    volatile uint64_t *p = (volatile uint64_t *)(DEMAND_VA + 0x1008);
    *p = 77;
    check("fault.upcall", faults_seen == 1, "no FAULT upcall");
    check("fault.cr2", fault_cr2 == DEMAND_VA + 0x1008, "cr2 is not the faulting address");
    check("fault.resume", *p == 77, "the write did not complete after resuming");
    uint64_t v = *(volatile uint64_t *)(DEMAND_VA + 0x3000);
    check("fault.resume_read", faults_seen == 2 && v == 0, "demand-paged read failed");
    set_fault_handler(0);
}

/* ------------------------------------------------------------------ */

/* The libOS's own allocator, on pages from our pool. */
static void test_malloc(void)
{
    char *blocks[64];
    int ok = 1;
    for (int i = 0; i < 64; i++) {
        size_t n = 1 + (size_t)i * 97;
        blocks[i] = malloc(n);
        if (!blocks[i]) { ok = 0; break; }
        memset(blocks[i], i, n);
    }
    for (int i = 0; ok && i < 64; i += 2)
        free(blocks[i]);
    char *big = ok ? malloc(3 * PAGE_SIZE + 5) : 0;
    if (big) memset(big, 0x5a, 3 * PAGE_SIZE + 5);
    for (int i = 1; ok && i < 64; i += 2)
        for (size_t k = 0; k < 1 + (size_t)i * 97; k++)
            if (blocks[i][k] != (char)i) { ok = 0; break; }
    char *r = ok ? realloc(blocks[1], 5000) : 0;
    ok = ok && big && r && r[97] == 1;
    char *z = calloc(100, 41);
    for (int k = 0; ok && z && k < 4100; k++)
        ok = z[k] == 0;
    check("libos.malloc", ok && z, "blocks lost their contents or allocation failed");
    free(z);
    free(big);
    free(r);
    char *highest = r > big ? r : big;         /* the top of what we allocated */
    if (z > highest)
        highest = z;
    for (int i = 3; i < 64; i += 2) {
        if (blocks[i] > highest)
            highest = blocks[i];
        free(blocks[i]);
    }
    void *again = malloc(64);
    check("libos.malloc.reuse", again && (uint64_t)again < XOMB_HEAP_VA + 64 * PAGE_SIZE,
          "freed blocks are not reused");
    free(again);
    char *first = malloc(4000);         /* first fit: a freed block comes back, every time */
    int same = first != 0;
    free(first);
    for (int i = 0; same && i < 100; i++) {
        char *q = malloc(4000);
        same = q == first;
        free(q);
    }
    check("libos.malloc.reuse_freed", same, "malloc after free did not get the freed block back");
    char *large = malloc(100000);       /* fits only in freed neighbours merged together */
    check("libos.malloc.coalesce", large && large < highest,
          "freed neighbours were not merged: a large block took new memory");
    free(large);
}

static int die_quietly(struct xomb_frame *f)
{
    exit(128 + (int)f->vector);         /* the parent reports it */
}

static int role(const char *name)
{
    set_fault_handler(die_quietly);
    if (!strcmp(name, "exit42"))
        return 42;
    if (!strcmp(name, "resume")) {
        long r = yield_to_parent(XOMB_UP_RESUME, 0, 0);
        return r == 0 ? 7 : 8;
    }
    if (!strcmp(name, "write-selfmap")) {
        *(volatile uint64_t *)(XOMB_SELF_PML4 + 8 * 4) = 0;
        return 0;
    }
    if (!strcmp(name, "write-pagetable")) {     /* our stack's leaf entry */
        *(volatile uint64_t *)(XOMB_SELF_PT + ((XOMB_STACK_TOP - PAGE_SIZE) >> 12) * 8) = 0x7;
        return 0;
    }
    if (!strcmp(name, "write-frames")) {
        *(volatile uint64_t *)XOMB_FRAMES_VA = 0;
        return 0;
    }
    if (!strcmp(name, "write-kernel")) {
        *(volatile uint64_t *)(XOMB_KBASE + XOMB_FRAMES_PHYS) = 0;
        return 0;
    }
    if (!strcmp(name, "grandparent")) {
        volatile uint64_t *box = (volatile uint64_t *)MAILBOX_VA;
        if (!vm_mapped(MAILBOX_VA))
            return 3;
        long s = slot_free();
        uint64_t d = donor();
        if (as_create(d, XOMB_PROGRAM_VA, s) != s)
            return 4;
        for (int lv = 3; lv >= 1; lv--)
            if (create(s, 0, lv) != 0)
                return 5;
        if (page_alloc_at(XOMB_AS_SELF, XOMB_SCRATCH_VA, XOMB_MAP_W) < 0)
            return 6;
        uint64_t pfn = vm_pfn(XOMB_SCRATCH_VA);
        if (xomb_map(s, 0x1000, XOMB_AS_SELF, XOMB_SCRATCH_VA, 1, XOMB_MAP_W | XOMB_MAP_MOVE).rv < 0)
            return 7;
        box[1] = vm_handle_root((unsigned)s);
        box[2] = pfn;
        box[3] = vm_self_root();
        box[0] = MAILBOX_MAGIC;
        return 0;
    }
    printf("sysconf: unknown role %s\n", name);
    return 2;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && !strcmp(argv[1], "--role"))
        return role(argv[2]);

    printf("sysconf: %lu pages in the pool\n", pool_free_pages());
    test_create();
    long bare = test_as_create();
    test_map(bare);
    test_yield(bare);
    test_upcalls();
    test_tables();
    test_release(bare);
    test_destroy_tree();
    test_malloc();
    if (nskip)
        printf("sysconf: %d skipped\n", nskip);
    printf("sysconf: %d passed, %d failed\n", npass, nfail);
    return nfail;
}
