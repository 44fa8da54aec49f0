/* The system-call stubs.  C passes arguments in rdi rsi rdx rcx r8 r9; the
 * kernel wants the fourth in r10 because `syscall` overwrites rcx with the
 * return address (and r11 with rflags).  The kernel clobbers only registers
 * the SysV ABI already treats as caller-saved, so nothing needs saving. */
#include "xomb_abi.h"

    .text

    .globl xomb_create          /* (as, va, level, donor_va) -> rax */
xomb_create:
    mov $XOMB_SYS_CREATE, %eax
    mov %rcx, %r10
    syscall
    ret

    .globl xomb_map             /* (dst_as, dst_va, src_as, src_va, n, flags) -> rax:rdx */
xomb_map:
    mov $XOMB_SYS_MAP, %eax
    mov %rcx, %r10
    syscall
    ret

    .globl xomb_as_create       /* (donor_va, entry, slot) -> rax */
xomb_as_create:
    mov $XOMB_SYS_AS_CREATE, %eax
    syscall
    ret

    .globl xomb_yield           /* (as, upcall, arg0, arg1): returns only on error */
xomb_yield:
    mov $XOMB_SYS_YIELD, %eax
    mov %rcx, %r10
    syscall
    ret

    .globl xomb_release         /* (as, va, n) -> rax:rdx */
xomb_release:
    mov $XOMB_SYS_RELEASE, %eax
    syscall
    ret

    .globl xomb_syscall6        /* (nr, a0..a5) -> rax:rdx ; a5 is on the stack */
xomb_syscall6:
    mov %rdi, %rax
    mov %rsi, %rdi
    mov %rdx, %rsi
    mov %rcx, %rdx
    mov %r8, %r10
    mov %r9, %r8
    mov 8(%rsp), %r9
    syscall
    ret

    .section .note.GNU-stack,"",@progbits
