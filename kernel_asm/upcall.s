/*
 * upcall.s - entering a libOS, and reflecting exceptions to it.
 *
 * The kernel never returns from an exception to user mode itself.  It saves
 * the interrupted registers into the process's own activation frame (the page
 * at UPCALL_VA, struct xomb_frame) and enters the libOS at its entry point with
 * a FAULT (or SYSCALL) upcall.  The libOS resumes the interrupted context in
 * user mode.  If the frame page is missing, read-only, or already in use (a
 * fault inside the fault handler), the process is dead: its parent gets a
 * CHILD_ERROR upcall.  If the root dies, the machine stops (panic port).
 *
 * Stack on arrival at exc_common: [rsp] vector, error, rip, cs, rflags, rsp, ss.
 */

exc_common:
    test byte ptr [rsp + 0x18], 3         /* from user mode? */
    jz kernel_panic
exc_user:
    push rax
    push rcx
    push rdx
    /* Is UPCALL_VA mapped present, writable, user?  Read our own tables
     * through the self-map (UPCALL_VA is in the first 2 MiB: index 0 at each
     * upper level, index 1 in the PT). */
    movabs rax, qword ptr [SELF_PML4]
    test al, 1
    jz exc_dead
    movabs rax, qword ptr [SELF_PDPT]
    test al, 1
    jz exc_dead
    movabs rax, qword ptr [SELF_PD]
    test al, 1
    jz exc_dead
    movabs rax, qword ptr [SELF_PT_UPCALL]
    and eax, 7
    cmp eax, 7
    jne exc_dead
    mov eax, UPCALL_VA
    cmp qword ptr [rax + FRAME_IN_UPCALL], 0
    jne exc_dead
    mov qword ptr [rax + FRAME_RBX], rbx
    mov qword ptr [rax + FRAME_RSI], rsi
    mov qword ptr [rax + FRAME_RDI], rdi
    mov qword ptr [rax + FRAME_RBP], rbp
    mov qword ptr [rax + FRAME_R8], r8
    mov qword ptr [rax + FRAME_R9], r9
    mov qword ptr [rax + FRAME_R10], r10
    mov qword ptr [rax + FRAME_R11], r11
    mov qword ptr [rax + FRAME_R12], r12
    mov qword ptr [rax + FRAME_R13], r13
    mov qword ptr [rax + FRAME_R14], r14
    mov qword ptr [rax + FRAME_R15], r15
    pop qword ptr [rax + FRAME_RDX]
    pop qword ptr [rax + FRAME_RCX]
    pop qword ptr [rax + FRAME_RAX]
    pop rsi                             /* vector */
    pop qword ptr [rax + FRAME_ERROR]
    pop qword ptr [rax + FRAME_RIP]
    add rsp, 8                          /* cs */
    pop qword ptr [rax + FRAME_RFLAGS]
    pop qword ptr [rax + FRAME_RSP]
    mov qword ptr [rax + FRAME_VECTOR], rsi
    mov rdx, cr2
    mov qword ptr [rax + FRAME_CR2], rdx
    mov qword ptr [rax + FRAME_IN_UPCALL], 1
    mov edi, UP_FAULT
    cmp esi, VEC_SYSCALL
    jne exc_enter
    mov edi, UP_SYSCALL
    mov rsi, qword ptr [rax + FRAME_RAX]
exc_enter:
    /* Same address space: the other registers are its own, nothing leaks. */
    mov r8, cr3
    mov rcx, qword ptr [r8 + KBASE_PML4_INFO]
    shr rcx, 1
    mov r11d, USER_RFLAGS
    xor esp, esp
    sysret

/* The process cannot take its own fault: enter its parent with CHILD_ERROR.
 * Stack: rdx, rcx, rax, vector, error, rip, cs, rflags, rsp, ss. */
exc_dead:
    mov r8, cr3                         /* the dead child's root */
    mov rcx, qword ptr [r8 + KBASE_SLOT1]
    test ecx, PTE_SLOT
    jz root_died
    and rcx, -0x1000
    mov rsi, qword ptr [rsp + 0x18]       /* vector */
    mov rdx, qword ptr [rsp + 0x28]       /* rip */
    cmp esi, 0xe
    jne exc_dead_rip
    mov rdx, cr2                        /* page fault: the address */
exc_dead_rip:
    mov cr3, rcx
    fxrstor [FPU_CLEAN]
    mov edi, UP_CHILD_ERROR
    mov rcx, qword ptr [rcx + KBASE_PML4_INFO]
    shr rcx, 1
    jmp upcall_enter

root_died:
    add rsp, 0x18                         /* [rsp] = vector, as for a kernel fault */

/* A fault in the kernel (or the root died): report through the panic port.
 * The VMM decodes the frame at rsp (vector, error, rip, cs, rflags, rsp, ss),
 * dumps the machine and exits non-zero.  Never returns. */
kernel_panic:
    mov rax, qword ptr [rsp]
    mov edx, PANIC_PORT
    out dx, al
kernel_halt:
    hlt
    jmp kernel_halt

/*
 * upcall_enter: enter another (or the same) address space's libOS.
 *   cr3 = target root, rcx = its entry point,
 *   rdi = upcall, rsi = arg0, rdx = arg1, r8 = sender's root.
 * Every other general register is cleared, so nothing of the sender leaks.
 */
upcall_enter:
    xor eax, eax
    xor ebx, ebx
    xor ebp, ebp
    xor r9d, r9d
    xor r10d, r10d
    xor r12d, r12d
    xor r13d, r13d
    xor r14d, r14d
    xor r15d, r15d
    mov r11d, USER_RFLAGS
    xor esp, esp
    sysret
