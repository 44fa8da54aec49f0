/*
 * selftest.s - the kernel's identity and its self-test (docs/UPGRADE.md).
 *
 * The kernel keeps no state outside page tables, the frame table and a few
 * per-CPU and global words, so a new kernel can take over a running system
 * (vmm/upgrade.py): the VMM stops every CPU at a safe point, swaps the code
 * and the IDT, and runs kernel_selftest below once, in the NEW code, before
 * any application does.  If the self-test fails, or faults, the VMM puts the
 * old kernel back.
 *
 *   kinfo_publish   copy this kernel's identity (KINFO: magic, build,
 *                   version string) from its data area to the gate page,
 *                   which every address space maps read-only at KINFO_VA.
 *                   CPU 0 calls it at boot; the self-test after an upgrade.
 *   kernel_selftest ring 0, interrupts off, a scratch stack: check the
 *                   inherited state, publish, report `out SELFTEST_PORT`
 *                   with eax = 0 (pass) or the number of the failed check.
 */

kinfo_publish:
    mov rsi, KINFO
    mov rdi, GATE_KINFO_KVA
    mov ecx, 8                          /* KINFO_SIZE / 8 */
    cld
    rep movsq
    ret

kernel_selftest:
    /* 1: our identity is intact (the VMM copied the whole image). */
    mov ecx, 1
    movabs rax, qword ptr [KINFO]
    mov rdx, KINFO_MAGIC
    cmp rax, rdx
    jne selftest_report
    /* 2: the CPU count the old kernel recorded is one we can serve. */
    mov ecx, 2
    movabs rax, qword ptr [K_NCPUS]
    test rax, rax
    jz selftest_report
    cmp rax, MAX_CPUS
    ja selftest_report
    /* 3: init's root is a page-aligned frame typed ROOT in the frame table. */
    mov ecx, 3
    movabs rax, qword ptr [K_ROOT_PHYS]
    test rax, rax
    jz selftest_report
    test eax, 0xfff
    jnz selftest_report
    shr rax, 0xc
    cmp byte ptr [rax*8 + FRAMES_TYPE_KVA], FT_ROOT
    jne selftest_report
    /* 4: the address space we run in is a ROOT too, and maps us. */
    mov ecx, 4
    mov rax, cr3
    mov rdx, rax
    shr rax, 0xc
    cmp byte ptr [rax*8 + FRAMES_TYPE_KVA], FT_ROOT
    jne selftest_report
    mov rax, KBASE
    mov rax, qword ptr [rdx + rax + 0xff8]  /* its PML4[511]: present, -> KT_PDPT */
    test al, PTE_P
    jz selftest_report
    and rax, -0x1000                    /* (the CPU sets the accessed bit) */
    cmp rax, KT_PDPT
    jne selftest_report
    /* 5: no CPU is inside the kernel (the big lock is free). */
    mov ecx, 5
    movabs rax, qword ptr [K_LOCK]
    test eax, eax
    jnz selftest_report
    call kinfo_publish
    xor ecx, ecx
selftest_report:
    mov eax, ecx
    mov edx, SELFTEST_PORT
    out dx, eax
selftest_halt:
    cli
    hlt
    jmp selftest_halt
