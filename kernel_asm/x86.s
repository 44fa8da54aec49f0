/*
 * x86.s - architectural constants (the ABI's own numbers come from abi.inc,
 * generated from vmm/abi.py and prepended by the build).
 */
.equ MSR_EFER, 0xC0000080
.equ MSR_STAR, 0xC0000081
.equ MSR_LSTAR, 0xC0000082
.equ MSR_SFMASK, 0xC0000084
.equ MSR_GS_BASE, 0xC0000101
.equ MSR_KERNEL_GS_BASE, 0xC0000102
