/*
 * start.s - the first 64-bit instructions, on every host.
 *
 * The VMM (vmm/bootimage.py) has already done everything that does not need
 * the CPU: page tables, frame table, init's address space, GDT/IDT/TSS
 * contents.  So the kernel's boot is only per-CPU register state, then the
 * first upcall into init.  The QEMU multiboot path (boot32.s) arrives here too,
 * after switching to long mode itself.
 *
 * On entry: long mode, cr3 = init's root, rsp = this CPU's kernel stack top.
 */

kernel_start64:
    lgdt [GDT_DESC]
    mov eax, GDT_KDS
    mov ss, eax
    mov ds, eax
    mov es, eax
    xor eax, eax
    mov fs, eax
    mov gs, eax
    push GDT_KCS                        /* reload CS from our GDT */
    lea rax, [rip + kernel_cs_loaded]
    push rax
    retfq
kernel_cs_loaded:
    lidt [IDT_DESC]
    movabs rax, qword ptr [BI_ROOT_PHYS_KVA]
    movabs qword ptr [K_ROOT_PHYS], rax     /* where freed frames go home */
    /* The TSS I/O bitmap is enabled only where boot info says so (QEMU's
     * COM1 and exit port for ring 3); elsewhere the base lies past the limit. */
    movabs rax, qword ptr [BI_IOMAP_BASE_KVA]
    movabs word ptr [TSS0_IOMAP], ax
    mov eax, GDT_TSS0
    ltr ax
    /* syscall: STAR (selectors), LSTAR (entry, or the PVM gate), SFMASK. */
    mov ecx, MSR_STAR
    xor eax, eax
    mov edx, STAR_HI
    wrmsr
    movabs rax, qword ptr [BI_LSTAR_KVA]
    mov rdx, rax
    shr rdx, 0x20
    mov ecx, MSR_LSTAR
    wrmsr
    mov ecx, MSR_SFMASK
    mov eax, SFMASK_VALUE
    xor edx, edx
    wrmsr
    /* swapgs convention: GS base 0 in user mode, KERNEL_GS_BASE = percpu. */
    mov rax, PERCPU0
    mov rdx, rax
    shr rdx, 0x20
    mov ecx, MSR_KERNEL_GS_BASE
    wrmsr
    fxrstor [FPU_CLEAN]
    /* First upcall: init's START. */
    mov rax, cr3
    mov rcx, qword ptr [rax + KBASE_PML4_INFO]
    shr rcx, 1
    mov edi, UP_START
    xor esi, esi
    xor edx, edx
    xor r8d, r8d
    jmp upcall_enter

/* The QEMU multiboot path: boot32.s switched to long mode on the boot page
 * tables (identity + kernel) and jumps here, still on a low stack. */
kernel_qemu_entry:
    mov rsp, PERCPU0_TOP
    movabs rax, qword ptr [BI_ROOT_PHYS_KVA]
    mov cr3, rax
    jmp kernel_start64
