/*
 * start.s - the first 64-bit instructions of every CPU, on every host.
 *
 * The VMM (vmm/bootimage.py) has already done everything that does not need
 * the CPU: page tables, frame table, init's address space, GDT/IDT/TSS
 * contents.  So the kernel's boot is only per-CPU register state, then the
 * first upcall into init: START on CPU 0, CPU (arg0 = index) on the others.
 * The VMM starts every vCPU here directly in long mode (no INIT/SIPI dance),
 * which works alike on PVM and VMX/SVM hosts.  The QEMU multiboot path
 * (boot32.s) arrives here too, after switching to long mode itself.
 *
 * On entry: long mode, cr3 = init's root, rsp = this CPU's kernel stack top,
 * rdi = this CPU's index.
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
    mov r12, rdi                        /* r12 = CPU index */
    movabs rax, qword ptr [BI_ROOT_PHYS_KVA]
    movabs qword ptr [K_ROOT_PHYS], rax /* where freed frames go home */
    movabs rax, qword ptr [BI_NCPUS_KVA] /* the kernel keeps its own copies: */
    movabs qword ptr [K_NCPUS], rax     /* init may release the boot-info page */
    /* The TSS I/O bitmap is enabled only where boot info says so (QEMU's
     * COM1 and exit port for ring 3); elsewhere the base lies past the limit. */
    imul rcx, r12, TSS_STRIDE
    mov rax, TSS0_IOMAP
    add rcx, rax
    movabs rax, qword ptr [BI_IOMAP_BASE_KVA]
    mov word ptr [rcx], ax
    mov eax, r12d
    shl eax, 4
    add eax, GDT_TSS0
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
    mov rbx, r12
    shl rbx, 0xe                        /* * KSTACK_SIZE */
    add rbx, PERCPU0
    mov rax, rbx
    mov rdx, rbx
    shr rdx, 0x20
    mov ecx, MSR_KERNEL_GS_BASE
    wrmsr
    mov rax, cr3
    mov qword ptr [rbx + PC_ROOT], rax
    /* The local APIC (x2APIC) where the VMM provides one: device interrupts,
     * shootdown IPIs, and the per-CPU tick (periodic, TIMER_VECTOR) if asked. */
    movabs rax, qword ptr [BI_APIC_KVA]
    test rax, rax
    jz kernel_no_timer
    mov ecx, MSR_APIC_BASE
    rdmsr
    or eax, 0xc00                       /* enable, x2APIC mode */
    wrmsr
    mov ecx, MSR_X2APIC_SVR
    mov eax, 0x1ff
    xor edx, edx
    wrmsr
    movabs rax, qword ptr [BI_TIMER_COUNT_KVA]
    test rax, rax
    jz kernel_no_timer
    mov r13, rax
    mov ecx, MSR_X2APIC_TIMER_DIV
    mov eax, 0xb                        /* divide by 1 */
    xor edx, edx
    wrmsr
    mov ecx, MSR_X2APIC_LVT_TIMER
    mov eax, APIC_TIMER_PERIODIC
    or eax, TIMER_VECTOR
    wrmsr
    mov ecx, MSR_X2APIC_TIMER_INIT
    mov eax, r13d
    wrmsr
kernel_no_timer:
    test r12, r12                       /* CPU 0: tell userspace which kernel runs */
    jnz kernel_published
    call kinfo_publish
kernel_published:
    fxrstor [FPU_CLEAN]
    /* First upcall into init. */
    mov rax, cr3
    mov rcx, qword ptr [rax + KBASE_PML4_INFO]
    shr rcx, 1
    mov edi, UP_START
    xor esi, esi
    test r12, r12
    jz kernel_enter_init
    mov edi, UP_CPU
    mov rsi, r12
kernel_enter_init:
    xor edx, edx
    xor r8d, r8d
    jmp upcall_enter

/* The QEMU multiboot path: boot32.s switched to long mode on the boot page
 * tables (identity + kernel) and jumps here, still on a low stack. */
kernel_qemu_entry:
    mov rsp, PERCPU0_TOP
    movabs rax, qword ptr [BI_ROOT_PHYS_KVA]
    mov cr3, rax
    xor edi, edi
    jmp kernel_start64
