/*
 * smp.s - what several CPUs need: one lock, TLB shootdowns, who runs what.
 *
 * The kernel takes one lock around every operation on shared state (page
 * tables, frame table, handle slots).  Each CPU records the root it runs
 * (percpu PC_ROOT): a CPU that removes mappings of an address space some other
 * CPU runs makes that CPU flush its TLB (an IPI, FLUSH_VECTOR) and waits for
 * it; an address space that runs somewhere cannot be destroyed (EBUSY).
 * While spinning for the lock a CPU answers flush requests itself, so two
 * CPUs can never wait for each other.
 */

/* klock: take the big kernel lock.  Preserves every register. */
klock:
    push rax
    push rcx
    mov rcx, K_LOCK
klock_try:
    mov eax, 1
    xchg eax, dword ptr [rcx]
    test eax, eax
    jnz klock_wait
    pop rcx
    pop rax
    ret
klock_wait:
    lea rax, [rsp - 1]
    and rax, -0x4000
    cmp byte ptr [rax + PC_FLUSH], 0
    je klock_pause
    push rcx
    mov rcx, cr3
    mov cr3, rcx
    pop rcx
    mov byte ptr [rax + PC_FLUSH], 0
klock_pause:
    pause
    cmp dword ptr [rcx], 0
    jne klock_wait
    jmp klock_try

/* tlb_shootdown: mappings of the address space whose root is rax were
 * removed; every other CPU running it flushes its TLB before we go on.
 * Lock held.  Clobbers rax, rcx. */
tlb_shootdown:
    cmp byte ptr [K_NCPUS], 1           /* one CPU: nobody else to tell */
    jbe shoot_ret
    push rdx
    push rdi
    push rsi
    push r8
    mov rdi, rax
    movabs rax, qword ptr [K_NCPUS]
    mov rsi, rax
    lea r8, [rsp - 1]
    and r8, -0x4000                     /* my percpu block */
    xor ecx, ecx
shoot_next:
    cmp rcx, rsi
    jae shoot_done
    mov rax, rcx
    shl rax, 0xe                        /* * KSTACK_SIZE */
    add rax, PERCPU0
    cmp rax, r8
    je shoot_skip
    cmp qword ptr [rax + PC_ROOT], rdi
    jne shoot_skip
    mov byte ptr [rax + PC_FLUSH], 1
    push rax
    push rcx
    mov edx, ecx                        /* x2APIC id = CPU index */
    mov eax, FLUSH_VECTOR
    mov ecx, MSR_X2APIC_ICR
    wrmsr
    pop rcx
    pop rax
shoot_wait:
    cmp byte ptr [rax + PC_FLUSH], 0
    je shoot_skip
    pause
    jmp shoot_wait
shoot_skip:
    inc rcx
    jmp shoot_next
shoot_done:
    pop r8
    pop rsi
    pop rdi
    pop rdx
shoot_ret:
    ret

/* as_busy: CF = 1 if some CPU runs the address space whose root is rax.
 * Clobbers rax, rcx. */
as_busy:
    push rdx
    push rsi
    mov rdx, rax
    movabs rax, qword ptr [K_NCPUS]
    mov rsi, rax
    xor ecx, ecx
busy_next:
    cmp rcx, rsi
    jae busy_no
    mov rax, rcx
    shl rax, 0xe
    add rax, PERCPU0
    cmp qword ptr [rax + PC_ROOT], rdx
    je busy_yes
    inc rcx
    jmp busy_next
busy_yes:
    pop rsi
    pop rdx
    stc
    ret
busy_no:
    pop rsi
    pop rdx
    clc
    ret
