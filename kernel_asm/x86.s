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
.equ MSR_APIC_BASE, 0x1B
.equ MSR_X2APIC_EOI, 0x80B
.equ MSR_X2APIC_SVR, 0x80F
.equ MSR_X2APIC_ICR, 0x830
.equ MSR_X2APIC_LVT_TIMER, 0x832
.equ MSR_X2APIC_TIMER_INIT, 0x838
.equ MSR_X2APIC_TIMER_DIV, 0x83E
.equ APIC_TIMER_PERIODIC, 0x20000
