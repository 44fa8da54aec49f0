/*
 * entry.s - every way into the kernel.
 *
 *   syscall_entry   LSTAR on VMX/SVM hosts, QEMU and real PCs: a real `syscall`.
 *   vec3            #BP.  On PVM hosts LSTAR points at the gate page (a page of
 *                   int3): a ring-3 `syscall` lands there still in ring 3, the
 *                   int3 traps here, and rip == GATE_VA+1 identifies it.
 *   vec0..vec31     exceptions: from user mode they become FAULT upcalls
 *                   (upcall.s), from kernel mode a panic.
 *
 * Both syscall paths build the same 5-word frame on the per-CPU kernel stack
 * ([rsp] rip, cs, rflags, user rsp, ss) and continue at syscall_common with
 * rcx = return rip and r11 = user rflags, exactly as after `syscall`.
 */

syscall_entry:
    swapgs                              /* gs: -> this CPU's percpu block */
    mov qword ptr gs:[PC_SCRATCH], rsp
    mov rsp, qword ptr gs:[PC_KTOP]
    push GDT_UDS
    push qword ptr gs:[PC_SCRATCH]
    push r11
    push GDT_UCS
    push rcx
    swapgs
    jmp syscall_common

/* Exception stubs: push a zero error code where the CPU pushes none, then the
 * vector, so exc_common always sees [rsp] = vector, [rsp+8] = error code. */
.macro VEC n
vec\n:
    push 0
    push \n
    jmp exc_common
.endm
.macro VEC_ERR n
vec\n:
    push \n
    jmp exc_common
.endm

VEC 0
VEC 1
VEC 2
vec3:
    cmp qword ptr [rsp], GATE_RIP_AFTER /* the PVM syscall gate? */
    je syscall_common
    push 0
    push 3
    jmp exc_common
VEC 4
VEC 5
VEC 6
VEC 7
VEC_ERR 8
VEC 9
VEC_ERR 10
VEC_ERR 11
VEC_ERR 12
VEC_ERR 13
VEC_ERR 14
VEC 15
VEC 16
VEC_ERR 17
VEC 18
VEC 19
VEC 20
VEC_ERR 21
VEC 22
VEC 23
VEC 24
VEC 25
VEC 26
VEC 27
VEC 28
VEC_ERR 29
VEC_ERR 30
VEC 31

/* Vectors 32..255: no interrupt source is programmed yet (timer and device
 * interrupts arrive with the SMP issue); a stray one is ignored. */
vec_spurious:
    iretq

/*
 * syscall_common: [rsp] = frame, rax = number, args rdi rsi rdx r10 r8 r9,
 * rcx = return rip, r11 = user rflags.  The frame's rip/rflags slots are
 * overwritten with the values sysret will use, sanitised: the kernel cannot
 * tell a real syscall from a jump to the gate, so rcx must be a canonical user
 * address (else the process dies with #GP) and only arithmetic flags and DF
 * survive from r11 (IF forced on, IOPL/NT/AC/TF cleared).
 */
syscall_common:
    mov qword ptr [rsp], rcx
    shr rcx, 47
    jnz sys_bad_rip
    and r11, 0xcd5
    or r11, USER_RFLAGS
    mov qword ptr [rsp + 16], r11
    cmp rax, NSYSCALLS
    jae sys_reflect
    jmp qword ptr [rax*8 + syscall_table]

/* rax = result (rdx = second result where the call has one). */
sys_return:
    mov rcx, qword ptr [rsp]
    mov r11, qword ptr [rsp + 16]
    mov rsp, qword ptr [rsp + 24]
    sysret

/* An unknown syscall number: reflect it to the libOS as a SYSCALL upcall with
 * the full register frame (rip = return address). */
sys_reflect:
    push 0
    push VEC_SYSCALL
    jmp exc_user

/* A jump to the gate with a non-canonical rcx: the process dies with #GP. */
sys_bad_rip:
    mov rcx, qword ptr [rsp]
    push 0
    push 13
    push rax
    push rcx
    push rdx
    jmp exc_dead
