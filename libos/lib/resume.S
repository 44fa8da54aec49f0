/* upcall_resume(): return from an upcall into the interrupted context.
 *
 * The kernel saved every general register, rip, rsp and rflags in the
 * activation frame at XOMB_UPCALL_VA and set in_upcall.  The libOS returns
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
 */
#include "xomb_abi.h"

#define F(field) (XOMB_UPCALL_VA + XOMB_FRAME_##field)

    .text
    .globl upcall_resume
upcall_resume:
    mov F(RSP), %rsp
    sub $128, %rsp
    pushq F(RIP)
    pushq F(RFLAGS)
    mov F(RAX), %rax
    mov F(RBX), %rbx
    mov F(RCX), %rcx
    mov F(RDX), %rdx
    mov F(RSI), %rsi
    mov F(RDI), %rdi
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
    popfq
    ret $128

    .section .note.GNU-stack,"",@progbits
