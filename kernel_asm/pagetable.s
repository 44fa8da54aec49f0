/*
 * pagetable.s - how the kernel reads and changes page tables.
 *
 * The kernel never dereferences a user address.  It walks an address space's
 * tables by physical address, through its own mapping of RAM at KBASE
 * (phys p is at KBASE + p), so a hostile argument can at worst name an absent
 * entry, which every walk checks.  Intermediate entries are always P|W|U
 * (rights live in the leaves), so `and -4096` recovers a table's address.
 */

/* WALK root, va, out, tmp, fail: out = KBASE address of the level-1 entry for
 * va in the address space whose PML4 is at physical `root`; jumps to `fail`
 * if a table on the way is missing.  va must be a user address (< 2^47).
 * Index shifts: 39 (0x27), 30 (0x1e), 21 (0x15), 12 (0xc); 511 = 0x1ff. */
.macro WALK root, va, out, tmp, fail
    mov \out, \va
    shr \out, 0x27
    mov \tmp, qword ptr [\root + \out*8 + KBASE]
    test \tmp, 1
    jz \fail
    and \tmp, -0x1000
    mov \out, \va
    shr \out, 0x1e
    and \out, 0x1ff
    mov \tmp, qword ptr [\tmp + \out*8 + KBASE]
    test \tmp, 1
    jz \fail
    and \tmp, -0x1000
    mov \out, \va
    shr \out, 0x15
    and \out, 0x1ff
    mov \tmp, qword ptr [\tmp + \out*8 + KBASE]
    test \tmp, 1
    jz \fail
    and \tmp, -0x1000
    mov \out, \va
    shr \out, 0xc
    and \out, 0x1ff
    lea \out, [\tmp + \out*8 + KBASE]
.endm

/* PFN reg: the frame number of a page-table entry (drops NX and flag bits). */
.macro PFN reg
    shl \reg, 0xc
    shr \reg, 0x18
.endm

/* take_donor: validate the page the caller donates for a new table or root.
 *   in:  r10 = donor va (in the caller), r11 = caller root
 *   out: r9  = KBASE address of the donor's leaf entry, rax = the entry
 *   errors jump to the caller's labels through rax = -error, CF=1.
 * Clobbers rax, rcx, r9.  Checks only; take_commit changes state. */
take_donor:
    test r10, 0xfff
    jnz take_einval
    mov rax, r10
    shr rax, 0x2f
    jnz take_einval
    WALK r11, r10, r9, rcx, take_enotheld
    mov rax, qword ptr [r9]
    test al, 1
    jz take_enotheld
    test al, 2
    jz take_enotheld
    mov rcx, rax
    PFN rcx
    cmp byte ptr [rcx*8 + FRAMES_TYPE_KVA], FT_DATA
    jne take_etype
    cmp dword ptr [rcx*8 + FRAMES_KVA], 1
    jne take_ebusy
    clc
    ret
take_einval:
    mov rax, NEG_EINVAL
    stc
    ret
take_enotheld:
    mov rax, NEG_ENOTHELD
    stc
    ret
take_etype:
    mov rax, NEG_ETYPE
    stc
    ret
take_ebusy:
    mov rax, NEG_EBUSY
    stc
    ret

/* take_commit: unmap the donor from the caller, zero it, type it.
 *   in:  r9 = donor leaf entry address, rax = the entry, r10 = donor va,
 *        r11 = caller root, rcx = the frame-table value to store (type|count)
 *   out: rax = the donor's physical address.  Clobbers rcx, rdi. */
take_commit:
    mov qword ptr [r9], 0
    invlpg [r10]
    PFN rax
    mov qword ptr [rax*8 + FRAMES_KVA], rcx
    mov rcx, r11
    shr rcx, 0xc
    dec dword ptr [rcx*8 + FRAMES_KVA]  /* the caller holds one page less */
    shl rax, 0xc
    push rax
    lea rdi, [rax + KBASE]
    xor eax, eax
    mov ecx, 0x200
    rep stosq
    mov rax, r11                        /* other CPUs running the caller */
    call tlb_shootdown                  /* must forget the donor page */
    pop rax
    ret

/*
 * frame_drop: one mapping of a frame is gone.  rax = the removed leaf entry.
 * When the last mapping goes, the frame returns home: it is zeroed (unless it
 * is a device page) and mapped again in the root's window at
 * WINDOW_VA + pfn*4096.  So memory is never lost and every frame handed out is
 * zero.  Clobbers rax, rcx; preserves everything else.
 */
frame_drop:
    PFN rax
    dec dword ptr [rax*8 + FRAMES_KVA]
    jnz frame_drop_done
    push rdi
    push rdx
    mov rdx, rax                        /* rdx = pfn */
    cmp byte ptr [rax*8 + FRAMES_TYPE_KVA], FT_DEVICE
    je frame_home
    mov rdi, rax
    shl rdi, 0xc
    add rdi, KBASE
    xor eax, eax
    mov ecx, 0x200
    rep stosq
frame_home:
    /* The root's window tables cover every frame (built at boot, never
     * freed): PML4[1] -> PDPT[pfn >> 18] -> PD[(pfn >> 9) & 511] -> PT[pfn & 511].
     * Checked anyway: without a table the frame would stay lost, never be
     * written through a wrong one. */
    movabs rax, qword ptr [K_ROOT_PHYS]
    mov rdi, rax
    mov rax, qword ptr [rdi + KBASE_WINDOW]
    test al, 1
    jz frame_home_lost
    and rax, -0x1000
    mov rcx, rdx
    shr rcx, 0x12
    mov rax, qword ptr [rax + rcx*8 + KBASE]
    test al, 1
    jz frame_home_lost
    and rax, -0x1000
    mov rcx, rdx
    shr rcx, 9
    and ecx, 0x1ff
    mov rax, qword ptr [rax + rcx*8 + KBASE]
    test al, 1
    jz frame_home_lost
    and rax, -0x1000
    mov rcx, rdx
    and ecx, 0x1ff
    lea rdi, [rax + rcx*8 + KBASE]      /* the window entry */
    mov rax, rdx                        /* the root holds free memory with */
    shl rax, 0xc                        /* every right (R W X): it narrows */
    or rax, PTE_PWU                     /* them when it hands pages out */
    cmp byte ptr [rdx*8 + FRAMES_TYPE_KVA], FT_DEVICE
    jne frame_home_store
    or rax, PTE_PCD                     /* device registers: uncached, */
    bts rax, 0x3f                       /* never executable */
frame_home_store:
    mov qword ptr [rdi], rax
    inc dword ptr [rdx*8 + FRAMES_KVA]  /* mapped once: in the window */
    movabs rax, qword ptr [K_ROOT_PHYS]
    shr rax, 0xc
    inc dword ptr [rax*8 + FRAMES_KVA]  /* the root holds it */
frame_home_lost:
    pop rdx
    pop rdi
frame_drop_done:
    ret

/* table_home: a page-table (or root) page at physical rax is no longer used:
 * retype it as data held once, and drop that hold.  Clobbers rax, rcx. */
table_home:
    mov rcx, rax
    shr rcx, 0xc
    push rdx
    movabs rdx, FT_DATA_ONE
    mov qword ptr [rcx*8 + FRAMES_KVA], rdx
    pop rdx
    jmp frame_drop

/* free_table: free every mapping under the table at physical rax (level ecx:
 * 3 = PDPT, 2 = PD, 1 = PT), then the table itself.  Recursion depth <= 3. */
free_table:
    push rbx
    push rbp
    push r12
    mov rbx, rax
    mov ebp, ecx
    xor r12d, r12d
free_table_entry:
    mov rax, qword ptr [rbx + r12*8 + KBASE]
    test al, 1
    jz free_table_next
    cmp ebp, 1
    je free_table_leaf
    and rax, -0x1000
    lea ecx, [rbp - 1]
    call free_table
    jmp free_table_next
free_table_leaf:
    call frame_drop
free_table_next:
    inc r12d
    cmp r12d, 0x200
    jb free_table_entry
    mov rax, rbx
    call table_home
    pop r12
    pop rbp
    pop rbx
    ret
