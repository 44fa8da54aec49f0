/* upcall_resume(): return from an upcall into the interrupted context.
 *
 * The kernel saved every general register, rip, rsp and rflags in this
 * CPU's activation frame (XOMB_UPCALL_VA + cpu * XOMB_FRAME_STRIDE) and set
 * in_upcall.  The libOS returns
 * entirely in user mode, without the kernel:
 *
 *   - switch to the interrupted stack, but 128 bytes lower: the interrupted
 *     code may keep live data in the red zone below its rsp (user code other
 *     than ours is free to use it), which must not be overwritten;
 *   - push rip and rflags there;
 *   - reload every other register from the frame, clear in_upcall;
 *   - popfq, then `ret $128`: pops rip and lifts rsp back over the gap, so
 *     the context continues with exactly its own rsp.
 *
 * After in_upcall is cleared only register moves, popfq and ret remain, and
 * they touch only stack bytes we just wrote, so nothing can fault in between.
 * A timer tick after in_upcall is cleared saves this very sequence as the
 * context and resumes it later: it only pops what it pushed, so that is safe.
 */
#include "xomb_abi.h"

#define F(field) XOMB_FRAME_##field(%rdi)

    /* upcall_resume(struct xomb_frame *f): f is this CPU's frame (rdi). */
    .text
    .globl upcall_resume
upcall_resume:
    cmpq $0, F(RSP)
    je restart
    mov F(RSP), %rsp
    sub $128, %rsp
    pushq F(RIP)
    pushq F(RFLAGS)
    mov F(RAX), %rax
    mov F(RBX), %rbx
    mov F(RCX), %rcx
    mov F(RDX), %rdx
    mov F(RSI), %rsi
    mov F(RBP), %rbp
    mov F(R8), %r8
    mov F(R9), %r9
    mov F(R10), %r10
    mov F(R11), %r11
    mov F(R12), %r12
    mov F(R13), %r13
    mov F(R14), %r14
    mov F(R15), %r15
    movq $0, F(IN_UPCALL)
    mov F(RDI), %rdi            /* last: rdi held the frame's address */
    popfq
    ret $128

    /* rsp == 0: a tick caught an upcall at our entry stub, before it chose a
     * stack, so nothing has happened yet: deliver that upcall again.  Every
     * entry register is reloaded before in_upcall is cleared, so a tick after
     * the clear saves a context that restarts the same way. */
restart:
    mov %rdi, %rax
    mov XOMB_FRAME_RSI(%rax), %rsi
    mov XOMB_FRAME_RDX(%rax), %rdx
    mov XOMB_FRAME_R8(%rax), %r8
    mov XOMB_FRAME_R9(%rax), %r9
    mov XOMB_FRAME_RDI(%rax), %rdi
    xor %esp, %esp
    movq $0, XOMB_FRAME_IN_UPCALL(%rax)
    jmp _start

    .section .note.GNU-stack,"",@progbits
