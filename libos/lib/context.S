/* ctx_save / ctx_restore: setjmp and longjmp for the libOS.
 *
 * A yield abandons the kernel stack: when the CPU comes back it arrives as a
 * fresh upcall at the entry point with rsp = 0.  Whoever yields and wants to
 * continue afterwards saves its callee-saved registers, rsp and a resume rip
 * first (ctx_save returns 0); the upcall handler later jumps back with
 * ctx_restore(ctx, v), which makes ctx_save return v (never 0).
 *
 * struct ctx { rbx, rbp, r12, r13, r14, r15, rsp, rip }
 */
    .text
    .globl ctx_save
ctx_save:
    mov %rbx, 0(%rdi)
    mov %rbp, 8(%rdi)
    mov %r12, 16(%rdi)
    mov %r13, 24(%rdi)
    mov %r14, 32(%rdi)
    mov %r15, 40(%rdi)
    lea 8(%rsp), %rax           /* rsp after our return */
    mov %rax, 48(%rdi)
    mov (%rsp), %rax            /* our return address */
    mov %rax, 56(%rdi)
    xor %eax, %eax
    ret

    .globl ctx_restore
ctx_restore:
    mov %esi, %eax
    test %eax, %eax
    jnz 1f
    inc %eax                    /* never return 0 from a restore */
1:  mov 0(%rdi), %rbx
    mov 8(%rdi), %rbp
    mov 16(%rdi), %r12
    mov 24(%rdi), %r13
    mov 32(%rdi), %r14
    mov 40(%rdi), %r15
    mov 48(%rdi), %rsp
    jmp *56(%rdi)

    .section .note.GNU-stack,"",@progbits
