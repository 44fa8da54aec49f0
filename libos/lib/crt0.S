/* crt0: the program's ELF entry is its upcall entry.
 *
 * The kernel enters an address space here for *every* upcall, with
 *   rdi = upcall number, rsi = arg0, rdx = arg1, r8 = the sender's root,
 *   rsp = 0 and every other register zero.
 * START runs the program on its main stack (below XOMB_STACK_TOP, mapped by
 * whoever built the address space; the loader zeroed .bss).  Every other
 * upcall runs on a small static stack of its own and never returns here:
 * it resumes an interrupted context, jumps back into a saved one, or exits.
 *
 * Two upcall stacks: FAULT/SYSCALL use one, the process upcalls (EXIT,
 * CHILD_ERROR, RESUME) the other, so a page fault taken while handling a
 * child's exit does not overwrite the exit handler's frames.
 */
#include "xomb_abi.h"

#define UPCALL_STACK 16384

    .section .text.start, "ax"
    .globl _start
_start:
    cmp $XOMB_UP_START, %rdi
    jne 1f
    mov libos_stack_top(%rip), %rsp
    xor %ebp, %ebp
    call libos_start            /* never returns */
    ud2

1:  cmp $XOMB_UP_SYSCALL, %rdi
    ja 2f
    lea fault_stack_top(%rip), %rsp
    jmp 3f
2:  lea proc_stack_top(%rip), %rsp
3:  mov %r8, %rcx               /* upcall_dispatch(no, arg0, arg1, from_root) */
    xor %ebp, %ebp
    call upcall_dispatch        /* never returns */
    ud2

    .bss
    .balign 16
    .globl fault_stack_base
fault_stack_base:
    .skip UPCALL_STACK
fault_stack_top:
    .balign 16
proc_stack:
    .skip UPCALL_STACK
proc_stack_top:

    .section .note.GNU-stack,"",@progbits
