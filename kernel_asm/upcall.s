/*
 * upcall.s - entering a libOS: exceptions, timer ticks, dead processes.
 *
 * The kernel never returns from an exception to user mode itself.  It saves
 * the interrupted registers into the process's own activation frame (one per
 * CPU, at UPCALL_VA + cpu*FRAME_STRIDE, struct xomb_frame) and enters the libOS
 * at its entry point with an upcall.  The libOS resumes the interrupted
 * context in user mode.  If the frame page is missing or read-only, or the
 * frame is already in use (a fault inside the fault handler), the process is
 * dead: its parent gets CHILD_ERROR.  If the root dies, the machine stops.
 *
 * A timer tick is the same: the running context is saved in its frame; the
 * root gets TIMER, any other address space loses the CPU to its parent, which
 * gets PREEMPT (CPU inheritance: the CPU goes back to whoever gave it).
 *
 * Stack on arrival at exc_common: [rsp] vector, error, rip, cs, rflags, rsp, ss.
 */

/* EOI: end of interrupt at the local APIC (x2APIC: a write of 0 to its MSR).
 * Clobbers rax, rcx, rdx. */
.macro EOI
    mov ecx, MSR_X2APIC_EOI
    xor eax, eax
    xor edx, edx
    wrmsr
.endm

exc_common:
    test byte ptr [rsp + 0x18], 3       /* from user mode? */
    jz kernel_panic
exc_user:
    push rax
    push rcx
    push rdx
    call klock
    call frame_find
    test rax, rax
    jz exc_dead
    cmp qword ptr [rax + FRAME_IN_UPCALL], 0
    jne exc_dead

/* exc_save: rax = the frame; stack: rdx, rcx, rax, vector, error, rip, cs,
 * rflags, rsp, ss.  Saves every user register, sets in_upcall, pops the
 * hardware frame, and dispatches on the vector (rsi). */
exc_save:
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
    cmp esi, TIMER_VECTOR
    je timer_saved
    mov edi, UP_FAULT
    cmp esi, VEC_SYSCALL
    jne exc_enter
    mov edi, UP_SYSCALL
    mov rsi, qword ptr [rax + FRAME_RAX]

/* exc_enter: enter the current address space with edi = upcall, rsi, rdx.
 * Same address space: the other registers are its own, nothing leaks. */
exc_enter:
    mov r8, cr3
    mov rcx, qword ptr [r8 + KBASE_PML4_INFO]
    shr rcx, 1
    lea r9, [rsp - 1]
    and r9, -0x4000
    mov qword ptr [r9 + PC_DEFER], 0
    mov r9, qword ptr [r9 + PC_CPU]
    mov r11, K_LOCK
    mov dword ptr [r11], 0              /* unlock */
    mov r11d, USER_RFLAGS
    xor esp, esp
    sysret

/* The process cannot take its own fault: enter its parent with CHILD_ERROR.
 * Lock held.  Stack: rdx, rcx, rax, vector, error, rip, cs, rflags, rsp, ss. */
exc_dead:
    mov r8, cr3                         /* the dead child's root */
    mov rcx, qword ptr [r8 + KBASE_SLOT1]
    test ecx, PTE_SLOT
    jz root_died
    and rcx, -0x1000
    mov rsi, qword ptr [rsp + 0x18]     /* vector */
    mov rdx, qword ptr [rsp + 0x28]     /* rip */
    cmp esi, 0xe
    jne exc_dead_rip
    mov rdx, cr2                        /* page fault: the address */
exc_dead_rip:
    mov edi, UP_CHILD_ERROR

/* to_parent: switch this CPU to the root rcx and enter it with edi, rsi, rdx,
 * r8 (lock held; released here). */
to_parent:
    mov cr3, rcx
    fxrstor [FPU_CLEAN]                 /* no SSE/x87 state crosses over */
    lea rax, [rsp - 1]
    and rax, -0x4000
    mov qword ptr [rax + PC_ROOT], rcx
    mov qword ptr [rax + PC_DEFER], 0
    mov qword ptr [rax + PC_TICKS], 0
    mov rcx, qword ptr [rcx + KBASE_PML4_INFO]
    shr rcx, 1
    mov rax, K_LOCK
    mov dword ptr [rax], 0              /* unlock */
    jmp upcall_enter

root_died:
    add rsp, 0x18                       /* [rsp] = vector, as for a kernel fault */

/* A fault in the kernel (or the root died): report through the panic port.
 * The VMM decodes the frame at rsp (vector, error, rip, cs, rflags, rsp, ss),
 * dumps the machine and exits non-zero.  Never returns. */
kernel_panic:
    mov rax, qword ptr [rsp]
    mov edx, PANIC_PORT
    out dx, al
kernel_halt:
    cli
    hlt
    jmp kernel_halt

/* frame_find: rax = this CPU's activation frame (a KBASE address, so no user
 * address is ever dereferenced) in the current address space, or 0 if
 * UPCALL_VA is not mapped present, writable, user, and ordinary memory (a
 * device page there would have the kernel write registers into a device).
 * Clobbers rax, rcx.
 * The walk reads our own tables through the self-map: UPCALL_VA is in the
 * first 2 MiB, index 0 at each upper level, index 1 in the PT. */
frame_find:
    movabs rax, qword ptr [SELF_PML4]
    test al, 1
    jz frame_none
    movabs rax, qword ptr [SELF_PDPT]
    test al, 1
    jz frame_none
    movabs rax, qword ptr [SELF_PD]
    test al, 1
    jz frame_none
    movabs rax, qword ptr [SELF_PT_UPCALL]
    mov ecx, eax
    and ecx, 7
    cmp ecx, 7
    jne frame_none
    shl rax, 0xc                        /* the page's frame number */
    shr rax, 0x18
    cmp byte ptr [rax*8 + FRAMES_TYPE_KVA], FT_DATA
    jne frame_none                      /* ordinary memory only, never device registers */
    shl rax, 0xc                        /* its physical address */
    lea rcx, [rsp - 1]
    and rcx, -0x4000
    mov rcx, qword ptr [rcx + PC_CPU]
    shl ecx, 8                          /* * FRAME_STRIDE */
    lea rax, [rax + rcx + KBASE]
    ret
frame_none:
    xor eax, eax
    ret

/*
 * vec_timer: the per-CPU LAPIC tick.  From the idle `hlt` (kernel mode) it
 * only wakes the CPU.  From user mode the context goes into the frame and the
 * running address space gets TIMER; at a second tick in a row a non-root one
 * loses the CPU to its parent instead (PREEMPT, timer_saved).  A busy
 * frame (the libOS is in its own handler) defers the tick; three deferred
 * ticks in a row and a non-root process is dead.  No frame: dead.
 */
vec_timer:
    push 0
    push TIMER_VECTOR
    push rax
    push rcx
    push rdx
    EOI
    test byte ptr [rsp + 0x30], 3
    jz timer_return                     /* woke the idle loop */
    call klock
    call frame_find
    test rax, rax
    jz timer_noframe
    cmp qword ptr [rax + FRAME_IN_UPCALL], 0
    je exc_save
    lea rax, [rsp - 1]                  /* busy: defer */
    and rax, -0x4000
    inc qword ptr [rax + PC_DEFER]
    cmp qword ptr [rax + PC_DEFER], 3
    jb timer_unlock
timer_noframe:
    mov rax, cr3
    test dword ptr [rax + KBASE_SLOT1], PTE_SLOT
    jnz exc_dead                        /* a child that cannot be preempted */
timer_unlock:
    mov rax, K_LOCK                     /* the root: the tick is dropped */
    mov dword ptr [rax], 0
timer_return:
    pop rdx
    pop rcx
    pop rax
    add rsp, 0x10
    iretq

/* The context is in the frame (lock held, rsi = vector).  The first tick
 * after an address space got the CPU is its own (TIMER: its libOS may switch
 * threads); a second without it yielding, and its parent takes the CPU back
 * (PREEMPT).  The root's ticks are always its own. */
timer_saved:
    mov r8, cr3
    mov rcx, qword ptr [r8 + KBASE_SLOT1]
    test ecx, PTE_SLOT
    jz timer_root
    lea rax, [rsp - 1]
    and rax, -0x4000
    cmp qword ptr [rax + PC_TICKS], 0
    jne timer_preempt
    mov qword ptr [rax + PC_TICKS], 1
    jmp timer_root
timer_preempt:
    and rcx, -0x1000                    /* the parent takes the CPU back */
    mov edi, UP_PREEMPT
    xor esi, esi
    xor edx, edx
    jmp to_parent
timer_root:
    mov edi, UP_TIMER
    mov esi, 1
    xor edx, edx
    jmp exc_enter

/* dev_common: a device interrupt ([rsp] = its device page).  It only marks
 * the device pending on this CPU: whoever waits for a device halts its CPU
 * (YIELD IDLE) and is entered with INTERRUPT and the pending mask (syscall.s,
 * yield_self); a CPU busy in user mode just keeps the mark for its next wait. */
dev_common:
    push rax
    push rcx
    push rdx
    EOI
    mov rcx, qword ptr [rsp + 0x18]
    lea rax, [rsp - 1]
    and rax, -0x4000
    lock bts qword ptr [rax + PC_IRQ], rcx
    pop rdx
    pop rcx
    pop rax
    add rsp, 8
    iretq

/* vec_flush: another CPU removed mappings of the address space we run (TLB
 * shootdown): reload cr3, then say so. */
vec_flush:
    push rax
    push rcx
    push rdx
    mov rax, cr3
    mov cr3, rax
    lea rax, [rsp - 1]
    and rax, -0x4000
    mov byte ptr [rax + PC_FLUSH], 0
    EOI
    pop rdx
    pop rcx
    pop rax
    iretq

/*
 * upcall_enter: enter another (or the same) address space's libOS.
 *   cr3 = target root, rcx = its entry point,
 *   rdi = upcall, rsi = arg0, rdx = arg1, r8 = sender's root.
 * r9 = this CPU's index; every other general register is cleared, so nothing
 * of the sender leaks.
 */
upcall_enter:
    lea r9, [rsp - 1]
    and r9, -0x4000
    mov r9, qword ptr [r9 + PC_CPU]
    xor eax, eax
    xor ebx, ebx
    xor ebp, ebp
    xor r10d, r10d
    xor r12d, r12d
    xor r13d, r13d
    xor r14d, r14d
    xor r15d, r15d
    mov r11d, USER_RFLAGS
    xor esp, esp
    sysret
