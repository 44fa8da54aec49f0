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
 * Two upcall stacks per CPU (r9 = the CPU's index): FAULT/SYSCALL use one,
 * the process upcalls (EXIT, CHILD_ERROR, RESUME, TIMER, ...) the other, so a
 * page fault taken while handling a child's exit does not overwrite the exit
 * handler's frames, and two CPUs in the same libOS never share a stack.
 */
#include "xomb_abi.h"

#define UPCALL_STACK 8192         /* per CPU and kind: 2 x MAX_CPUS of them */

    .section .text.start, "ax"
    .globl _start
_start:
    cmp $XOMB_UP_START, %rdi
    jne 1f
    mov libos_stack_top(%rip), %rsp
    mov %r9, libos_home_cpu(%rip)
    xor %ebp, %ebp
    call libos_start            /* never returns */
    ud2

1:  cmp $XOMB_UP_SYSCALL, %rdi
    ja 2f
    lea fault_stack_base(%rip), %rsp
    jmp 3f
2:  lea proc_stack(%rip), %rsp
3:  lea 1(%r9), %rax            /* r9 = this CPU: its own stacks */
    shl $13, %rax               /* * UPCALL_STACK */
    add %rax, %rsp
    mov %r8, %rcx               /* upcall_dispatch(no, arg0, arg1, from_root, cpu) */
    mov %r9, %r8
    xor %ebp, %ebp
    call upcall_dispatch        /* never returns */
    ud2

    .bss
    .balign 16
    .globl fault_stack_base, proc_stack
fault_stack_base:
    .skip UPCALL_STACK * XOMB_MAX_CPUS
    .balign 16
proc_stack:
    .skip UPCALL_STACK * XOMB_MAX_CPUS

    .section .note.GNU-stack,"",@progbits
