/*
 * boot32.s - the multiboot entry (QEMU -kernel, GRUB): 32-bit protected mode.
 *
 * This path exists so the very same kernel image boots on a plain PC, which is
 * how the tests check the real `syscall` path no PVM host can run.  The
 * multiboot module is the boot state the VMM would have written straight into
 * RAM (vmm/bootimage.py, BootState.blob()): we copy it to BOOTINFO_PHYS, zero
 * its source, enter long mode on the boot page tables and join the VMM path.
 * Assembled in 32-bit mode at KERNEL_PHYS; MB_*, GDT_PHYS and QEMU_ENTRY come
 * from the 64-bit assembly.
 */
mb_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long MB_CHECKSUM
    .long mb_header                     /* header_addr */
    .long KERNEL_PHYS                   /* load_addr */
    .long 0                             /* load_end_addr: the whole file */
    .long MB_BSS_END                    /* modules are loaded above this */
    .long mb_entry
mb_entry:
    cli
    cld
    mov esp, 0x9000
    mov al, 0xff                        /* mask the legacy PIC: no interrupts */
    out 0x21, al
    out 0xa1, al
    mov esi, dword ptr [ebx + 0x18]       /* mbi->mods_addr */
    mov ecx, dword ptr [esi + 4]        /* mod_end */
    mov esi, dword ptr [esi]            /* mod_start */
    sub ecx, esi
    mov edx, esi
    add edx, ecx                        /* edx = mod_end */
    mov edi, BOOTINFO_PHYS
    rep movsb
    mov edi, MB_BSS_END                 /* QEMU's multiboot info and the module */
    mov ecx, edx                        /* lie in [MB_BSS_END, mod_end): free */
    sub ecx, edi                        /* frames must be zero */
    xor eax, eax
    rep stosb
    mov eax, cr4
    or eax, 0x6a0                       /* PAE PGE OSFXSR OSXMMEXCPT */
    mov cr4, eax
    mov eax, KT_BOOT_PML4
    mov cr3, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 0xd01                       /* SCE LME NXE */
    wrmsr
    mov eax, 0x80050033                 /* PG AM WP NE ET MP PE */
    mov cr0, eax
    .byte 0x0f, 0x01, 0x15              /* lgdt [mb_gdt_desc] (keystone adds a 0x66 */
    .long mb_gdt_desc                   /*  prefix, which would truncate the base) */
    push GDT_KCS
    mov eax, mb_long                    /* keystone cannot `push label` */
    push eax
    retf
mb_long:                                /* 64-bit, identity-mapped: */
    .byte 0x48, 0xb8                    /* movabs rax, kernel_qemu_entry */
    .long QEMU_ENTRY_LO
    .long QEMU_ENTRY_HI
    .byte 0xff, 0xe0                    /* jmp rax */
mb_gdt_desc:
    .word GDT_LIMIT
    .long GDT_PHYS
