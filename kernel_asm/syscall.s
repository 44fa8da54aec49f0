/*
 * syscall.s - the five system calls (docs/SYSCALLS.md).
 *
 * Arrive from syscall_common with rax = number, arguments in rdi rsi rdx r10
 * r8 r9; rcx/r11 are free (saved in the frame).  May clobber the SysV
 * caller-saved registers; must preserve rbx rbp r12-r15.  Leave through
 * sys_return with rax = result (rdx = pages done for MAP and RELEASE).
 *
 * Every check happens before the first change, except in the page loops of
 * MAP and RELEASE, which stop at the first bad page and report how many pages
 * were done: a failure never leaves a half-done page.
 */

/* SLOT h, cur, fail: replace handle h (>= 1, a register) by the root it names
 * in the caller's PML4 (physical `cur`): slot PML4[256 + h], tagged PTE_SLOT. */
.macro SLOT h, cur, fail
    cmp \h, MAX_HANDLES
    jae \fail
    mov \h, qword ptr [\cur + \h*8 + KBASE_SLOT0]
    test \h, PTE_SLOT
    jz \fail
    and \h, -0x1000
.endm

sys_ok0:
    xor eax, eax
    xor edx, edx
    jmp sys_return
sys_einval:
    mov rax, NEG_EINVAL
    jmp sys_error
sys_ebadh:
    mov rax, NEG_EBADH
    jmp sys_error
sys_erange:
    mov rax, NEG_ERANGE
    jmp sys_error
sys_eexist:
    mov rax, NEG_EEXIST
    jmp sys_error
sys_enotable:
    mov rax, NEG_ENOTABLE
sys_error:
    xor edx, edx
    jmp sys_return

/* ---------------------------------------------------------------------------
 * MAP(dst_as, dst_va, src_as, src_va, n, flags): share or move n pages.
 */
sys_map:
    test r9, -0xf                        /* flags: only MAP_W | MAP_X | MAP_MOVE */
    jnz sys_einval
    mov r11, cr3
    test rdi, rdi
    jnz map_dst_slot
    mov rdi, r11
    jmp map_dst_done
map_dst_slot:
    SLOT rdi, r11, sys_ebadh
map_dst_done:
    test rdx, rdx
    jnz map_src_slot
    mov rdx, r11
    jmp map_src_done
map_src_slot:
    cmp rdx, AS_PARENT                  /* a child may not take its parent's pages */
    je sys_ebadh
    SLOT rdx, r11, sys_ebadh
map_src_done:
    test r8, r8                         /* n = 0: the null syscall */
    jz sys_ok0
    cmp r8, MAP_MAX_PAGES
    ja sys_erange
    mov rax, rsi
    or rax, r10
    test eax, 0xfff
    jnz sys_einval
    mov rcx, r8
    shl rcx, 0xc
    lea rax, [rsi + rcx - 1]            /* both ranges below USER_LIMIT: */
    shr rax, 0x27                         /* PML4[255] holds the kernel's gate */
    cmp eax, PML4_GATE
    jae sys_erange
    lea rax, [r10 + rcx - 1]
    shr rax, 0x27
    cmp eax, PML4_GATE
    jae sys_erange
    /* No destination inside the window range (PML4 index 1): it is where
     * freed frames go home in the root. */
    mov rax, rsi
    shr rax, 0x27
    cmp eax, 1
    ja map_checked
    je sys_einval
    lea rax, [rsi + rcx - 1]
    shr rax, 0x27
    test eax, eax
    jnz sys_einval
map_checked:
    push rbx
    push rbp
    push r12
    push r8
    /* rdi dst root, rsi dst va, rdx src root, r10 src va, r8 pages left,
     * r9 flags, r11 caller root; rbx/rbp src/dst entry addresses, r12 entry.
     * The tables are walked once per 2 MiB: within one page table the next
     * entry is simply 8 bytes on (rbx/rbp = 0 means "not walked yet"). */
    xor ebx, ebx
    xor ebp, ebp
map_loop:
    test rbx, rbx
    jz map_walk_src
    add rbx, 8
    test r10d, 0x1ff000
    jnz map_src_ready
map_walk_src:
    WALK rdx, r10, rbx, rax, map_enotheld
map_src_ready:
    mov r12, qword ptr [rbx]
    test r12b, PTE_P
    jz map_enotheld
    test r9b, MAP_W                     /* rights are never amplified */
    jz map_w_ok
    test r12b, PTE_W
    jz map_eperm
map_w_ok:
    test r9b, MAP_X
    jz map_x_ok
    bt r12, 0x3f
    jc map_eperm
map_x_ok:
    mov rax, r12
    PFN rax
    movzx ecx, byte ptr [rax*8 + FRAMES_TYPE_KVA]
    cmp ecx, FT_DATA
    je map_type_ok
    cmp ecx, FT_DEVICE
    jne map_etype
map_type_ok:
    test rbp, rbp
    jz map_walk_dst
    add rbp, 8
    test esi, 0x1ff000
    jnz map_dst_ready
map_walk_dst:
    WALK rdi, rsi, rbp, rcx, map_enotable
map_dst_ready:
    test byte ptr [rbp], PTE_P          /* never overwrite a mapping */
    jnz map_eexist
    mov rcx, r12
    shl rcx, 0xc
    shr rcx, 0xc
    and rcx, -0xff0                      /* frame address and PCD */
    or rcx, PTE_PU
    test r9b, MAP_W
    jz map_ro
    or rcx, PTE_W
map_ro:
    test r9b, MAP_X
    jnz map_exec
    bts rcx, 0x3f
map_exec:
    mov qword ptr [rbp], rcx
    test r9b, MAP_MOVE
    jz map_share
    mov qword ptr [rbx], 0
    cmp rdx, r11
    jne map_moved
    invlpg [r10]
map_moved:
    mov rcx, rdx
    shr rcx, 0xc
    dec dword ptr [rcx*8 + FRAMES_KVA]  /* the source holds one page less */
    jmp map_count
map_share:
    inc dword ptr [rax*8 + FRAMES_KVA]  /* one more mapping of the frame */
map_count:
    mov rcx, rdi
    shr rcx, 0xc
    inc dword ptr [rcx*8 + FRAMES_KVA]  /* the destination holds one more */
    add rsi, 0x1000
    add r10, 0x1000
    dec r8
    jnz map_loop
    xor eax, eax
map_out:
    test r9b, MAP_MOVE                  /* moved pages left the source: */
    jz map_no_shootdown                 /* no other CPU may still see them */
    push rax
    mov rax, rdx
    call tlb_shootdown
    pop rax
map_no_shootdown:
    pop rdx
    sub rdx, r8                         /* pages done */
    pop r12
    pop rbp
    pop rbx
    jmp sys_return
map_enotheld:
    mov rax, NEG_ENOTHELD
    jmp map_out
map_eperm:
    mov rax, NEG_EPERM
    jmp map_out
map_etype:
    mov rax, NEG_ETYPE
    jmp map_out
map_enotable:
    mov rax, NEG_ENOTABLE
    jmp map_out
map_eexist:
    mov rax, NEG_EEXIST
    jmp map_out

/* ---------------------------------------------------------------------------
 * CREATE(as, va, level, donor_va): install a donated page as a page table.
 */

/* DESCEND shift: r8 = the entry of one level down (index va >> shift), through
 * the table the entry at r8 points to; ENOTABLE if it is missing. */
.macro DESCEND shift
    mov rax, qword ptr [r8]
    test al, 1
    jz sys_enotable
    and rax, -0x1000
    mov rcx, rsi
    shr rcx, \shift
    and ecx, 0x1ff
    lea r8, [rax + rcx*8 + KBASE]
.endm
sys_create:
    lea rax, [rdx - 1]
    cmp rax, 2
    ja sys_einval
    lea ecx, [rdx + rdx*8 + 0xc]         /* the region's size: 2^(12 + 9*level) */
    mov rax, rsi
    shr rax, cl
    shl rax, cl
    cmp rax, rsi
    jne sys_einval
    shr rax, 0x27
    cmp eax, PML4_GATE
    jae sys_einval
    mov r11, cr3
    test rdi, rdi
    jnz create_slot
    mov rdi, r11
    jmp create_target
create_slot:
    cmp rdi, AS_PARENT
    je sys_ebadh
    SLOT rdi, r11, sys_ebadh
create_target:
    /* r8 = the entry that will point at the new table */
    mov rax, rsi
    shr rax, 0x27
    lea r8, [rdi + rax*8 + KBASE]
    cmp edx, 3
    je create_found
    DESCEND 0x1e
    cmp edx, 2
    je create_found
    DESCEND 0x15
create_found:
    test byte ptr [r8], PTE_P
    jnz sys_eexist
    call take_donor
    jc sys_error
    movabs rcx, FT_TABLE_ONE
    push rdi
    call take_commit
    pop rdi
    or rax, PTE_PWU
    mov qword ptr [r8], rax
    shr rdi, 0xc
    inc dword ptr [rdi*8 + FRAMES_KVA]  /* the target holds its new table */
    jmp sys_ok0

/* ---------------------------------------------------------------------------
 * AS_CREATE(donor_va, entry, slot): a new child address space.
 */
sys_as_create:
    cmp rdx, 2
    jb sys_einval
    cmp rdx, MAX_HANDLES
    jae sys_einval
    mov rax, rsi
    shr rax, 0x2f
    jnz sys_einval
    mov r11, cr3
    cmp qword ptr [r11 + rdx*8 + KBASE_SLOT0], 0
    jne sys_eexist
    mov r10, rdi
    call take_donor
    jc sys_error
    movabs rcx, FT_ROOT_ONE
    call take_commit
    /* The kernel half every address space shares (bootimage.py builds init's
     * identically): kernel, user window, gate, self-map, entry point, parent. */
    mov qword ptr [rax + KBASE_KERNEL], KERNEL_PML4E
    mov qword ptr [rax + KBASE_USERWIN], USERWIN_PML4E
    mov qword ptr [rax + KBASE_GATE], GATE_PML4E
    mov rcx, rax
    or rcx, PTE_PU
    bts rcx, 0x3f
    mov qword ptr [rax + KBASE_SELF], rcx
    lea rcx, [rsi + rsi]
    mov qword ptr [rax + KBASE_PML4_INFO], rcx
    mov rcx, r11
    or rcx, PTE_SLOT
    mov qword ptr [rax + KBASE_SLOT1], rcx
    or rax, PTE_SLOT
    mov qword ptr [r11 + rdx*8 + KBASE_SLOT0], rax
    mov rax, rdx
    xor edx, edx
    jmp sys_return

/* ---------------------------------------------------------------------------
 * YIELD(as, upcall, arg0, arg1): switch to an address space.  No return.
 */
sys_yield:
    cmp rsi, UP_USER_MIN                /* kernel upcalls cannot be forged */
    jb sys_einval
    mov r8, cr3
    mov rax, r8
    test rdi, rdi
    jz yield_self
    SLOT rdi, r8, sys_ebadh
    mov rax, rdi
    cmp rax, r8
    je yield_enter
    mov cr3, rax
    fxrstor [FPU_CLEAN]                 /* no SSE/x87 state crosses over */
    lea rcx, [rsp - 1]
    and rcx, -0x4000
    mov qword ptr [rcx + PC_ROOT], rax
    mov qword ptr [rcx + PC_DEFER], 0
    mov qword ptr [rcx + PC_TICKS], 0
yield_enter:
    mov rcx, K_LOCK
    mov dword ptr [rcx], 0              /* unlock */
    mov rcx, qword ptr [rax + KBASE_PML4_INFO]
    shr rcx, 1
    mov rdi, rsi
    mov rsi, rdx
    mov rdx, r10
    jmp upcall_enter
yield_self:
    cmp rsi, UP_IDLE
    jne yield_enter
    /* IDLE: nothing to run on this CPU.  Halt until an interrupt, then enter
     * ourselves with INTERRUPT (a device: arg0 = the pending mask) or TIMER
     * (arg0 = 0).  Pending device interrupts are checked with interrupts off
     * before halting (sti's one-instruction shadow covers hlt): none is lost. */
    mov rcx, K_LOCK
    mov dword ptr [rcx], 0
    lea rcx, [rsp - 1]
    and rcx, -0x4000
    cmp qword ptr [rcx + PC_IRQ], 0
    jne yield_irq
    sti
    hlt
yield_halted:                           /* a halted CPU's rip: a safe point for an upgrade */
    cli
    cmp qword ptr [rcx + PC_IRQ], 0
    jne yield_irq
    mov edi, UP_TIMER
    xor esi, esi
    jmp yield_woken
yield_irq:
    xor esi, esi
    xchg rsi, qword ptr [rcx + PC_IRQ]  /* take and clear the mask */
    mov edi, UP_INTERRUPT
yield_woken:
    xor edx, edx
    mov rcx, qword ptr [r8 + KBASE_PML4_INFO]
    shr rcx, 1
    jmp upcall_enter

/* ---------------------------------------------------------------------------
 * RELEASE(as, va, n): unmap n pages; RELEASE(child, 0, 0) destroys it.
 */
sys_release:
    mov r11, cr3
    test rsi, rsi
    jnz release_pages
    test rdx, rdx
    jz sys_destroy
release_pages:
    test rdi, rdi
    jnz release_slot
    mov rdi, r11
    jmp release_target
release_slot:
    cmp rdi, AS_PARENT
    je sys_ebadh
    SLOT rdi, r11, sys_ebadh
release_target:
    test rdx, rdx
    jz sys_ok0
    cmp rdx, MAP_MAX_PAGES
    ja sys_erange
    test esi, 0xfff
    jnz sys_einval
    mov rcx, rdx
    shl rcx, 0xc
    lea rax, [rsi + rcx - 1]
    shr rax, 0x27
    cmp eax, PML4_GATE
    jae sys_erange
    push rbx
    push rdx
    /* rdi root, rsi va, rdx pages left, r11 caller root, rbx entry address */
    xor ebx, ebx                        /* walked once per 2 MiB, as in MAP */
release_loop:
    test rbx, rbx
    jz release_walk
    add rbx, 8
    test esi, 0x1ff000
    jnz release_ready
release_walk:
    WALK rdi, rsi, rbx, rax, release_skip
release_ready:
    mov rax, qword ptr [rbx]
    test al, 1
    jz release_next
    mov qword ptr [rbx], 0
    cmp rdi, r11
    jne release_unmapped
    invlpg [rsi]
release_unmapped:
    mov rcx, rdi
    shr rcx, 0xc
    dec dword ptr [rcx*8 + FRAMES_KVA]  /* the address space holds one less */
    call frame_drop
release_next:
    add rsi, 0x1000
    dec rdx
    jnz release_loop
    jmp release_out
release_skip:                           /* no table here: jump to the next 2 MiB */
    mov rax, rsi
    or rax, 0x1fffff
    inc rax
    sub rax, rsi
    shr rax, 0xc
    cmp rax, rdx
    jae release_all
    sub rdx, rax
    shl rax, 0xc
    add rsi, rax
    jmp release_loop
release_all:
    xor edx, edx
release_out:
    mov rax, rdi
    call tlb_shootdown
    xor eax, eax
    pop rcx
    sub rcx, rdx
    mov rdx, rcx
    pop rbx
    jmp sys_return

/* Destroy a child and everything below it, depth first.  No kernel stack is
 * needed for the tree walk: each PML4 names its parent in slot 1.  An address
 * space running on some CPU cannot be freed: EBUSY, after which the tree is
 * still consistent (only fully freed descendants are gone) and the call can
 * be repeated. */
sys_destroy:
    cmp rdi, 2
    jb sys_ebadh
    cmp rdi, MAX_HANDLES
    jae sys_ebadh
    mov rax, qword ptr [r11 + rdi*8 + KBASE_SLOT0]
    test eax, PTE_SLOT
    jz sys_ebadh
    and rax, -0x1000
    push rbx
    push r12
    push r13
    mov r13, rax                        /* the child */
    mov rbx, rax                        /* the address space being visited */
destroy_visit:
    mov rax, rbx
    call as_busy
    jc destroy_busy
    mov ecx, 2
destroy_scan:
    mov rax, qword ptr [rbx + rcx*8 + KBASE_SLOT0]
    test eax, PTE_SLOT
    jnz destroy_descend
    inc ecx
    cmp ecx, MAX_HANDLES
    jb destroy_scan
    xor r12d, r12d                      /* no children left: free its user half */
destroy_pml4e:
    mov rax, qword ptr [rbx + r12*8 + KBASE]
    test al, 1
    jz destroy_pml4e_next
    and rax, -0x1000
    mov ecx, 3
    call free_table
destroy_pml4e_next:
    inc r12d
    cmp r12d, PML4_GATE                 /* not the kernel-owned gate tables */
    jb destroy_pml4e
    mov r12, qword ptr [rbx + KBASE_SLOT1]
    and r12, -0x1000                    /* its parent: clear the slot naming it */
    mov ecx, 2
destroy_unlink:
    mov rax, qword ptr [r12 + rcx*8 + KBASE_SLOT0]
    xor rax, rbx
    cmp rax, PTE_SLOT
    je destroy_unlinked
    inc ecx
    cmp ecx, MAX_HANDLES
    jb destroy_unlink
    jmp destroy_free                    /* (cannot happen: the tree names it) */
destroy_unlinked:
    mov qword ptr [r12 + rcx*8 + KBASE_SLOT0], 0
destroy_free:
    mov rax, rbx
    call table_home                     /* the root page itself */
    cmp rbx, r13
    je destroy_done
    mov rbx, r12
    jmp destroy_visit
destroy_descend:
    and rax, -0x1000
    mov rbx, rax
    jmp destroy_visit
destroy_busy:
    pop r13
    pop r12
    pop rbx
    mov rax, NEG_EBUSY
    jmp sys_error
destroy_done:
    pop r13
    pop r12
    pop rbx
    jmp sys_ok0
