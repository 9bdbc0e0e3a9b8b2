/*
 * Entry points of every test guest.
 *
 * pvh_start: the PVH entry (named by the ELF note below). 32-bit protected
 *   mode, paging off, EBX = hvm_start_info.
 * _start64:  the ELF entry, used by the Linux 64-bit boot protocol. Long mode
 *   with the VMM's page tables, RSI = zero page.
 * ap_tramp_start..ap_tramp_end: real-mode code for application processors,
 *   copied to AP_TRAMPOLINE (0x10000) and started by INIT/SIPI vector 0x10.
 *
 * Both boot paths record the state they arrived in, install the runtime's
 * GDT (and on PVH its identity-mapped page tables) and call rt_main().
 */
#define MSR_EFER 0xc0000080
#define AP_TRAMPOLINE 0x10000
#define SEL_CODE64 0x08
#define SEL_DATA 0x10
#define SEL_CODE32 0x18

.section .note.pvh, "a"
.align 4
.long 4               /* name size: "Xen\0" */
.long 4               /* descriptor size */
.long 18              /* XEN_ELFNOTE_PHYS32_ENTRY */
.asciz "Xen"
.long pvh_start

.section .text.entry, "ax"
.code32
.globl pvh_start
pvh_start:
    cli
    movl $bsp_stack_top, %esp     /* PVH gives no stack */
    movl %ebx, rt_boot_start_info
    movl $1, rt_boot_kind
    movl %cr0, %eax
    movl %eax, rt_boot_cr0
    movl %cr4, %eax
    movl %eax, rt_boot_cr4
    pushfl
    popl %eax
    movl %eax, rt_boot_rflags
    movl $MSR_EFER, %ecx
    rdmsr
    movl %eax, rt_boot_efer

    lgdt gdt_desc
    movw $SEL_DATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss

    /* PML4[0] -> PDPT; PDPT[0..3] -> four PD pages covering 4 GiB. Only
     * the first 64 MiB (32 x 2 MiB) is mapped here: filling all 2048 PD
     * entries costs ~10k emulated instructions (~5 ms on PVM hosts), so the
     * rest is mapped on first touch by the page-fault handler (rt.c). */
    movl $pdpt, %eax
    orl $3, %eax
    movl %eax, pml4
    movl $0, pml4+4
    movl $pd, %eax
    orl $3, %eax
    movl $pdpt, %edi
    movl $4, %ecx
1:  movl %eax, (%edi)
    movl $0, 4(%edi)
    addl $0x1000, %eax
    addl $8, %edi
    loop 1b
    movl $pd, %edi
    movl $0x83, %eax
    movl $32, %ecx
2:  movl %eax, (%edi)
    movl $0, 4(%edi)
    addl $0x200000, %eax
    addl $8, %edi
    loop 2b
9:  movl $pml4, %eax
    movl %eax, ap_cr3
    call enter_long_mode32
    ljmp $SEL_CODE64, $common64

/* CR3 = ap_cr3, CR4.PAE, EFER.LME, CR0.PG|PE. Used by the BSP and the APs. */
enter_long_mode32:
    movl ap_cr3, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $MSR_EFER, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax
    movl %eax, %cr0
    ret

.code64
.globl _start64
_start64:
    cli
    movq %rsi, rt_boot_zero_page
    movl $2, rt_boot_kind
    movq %cr0, %rax
    movq %rax, rt_boot_cr0
    movq %cr4, %rax
    movq %rax, rt_boot_cr4
    pushfq
    popq %rax
    movq %rax, rt_boot_rflags
    movl $MSR_EFER, %ecx
    rdmsr
    movl %eax, rt_boot_efer
    /* Keep the VMM's page tables (they identity-map 4 GiB; docs/boot.md);
     * the APs will use them too. */
    movq %cr3, %rax
    movl %eax, ap_cr3
    lgdt gdt_desc
    pushq $SEL_CODE64
    leaq common64(%rip), %rax
    pushq %rax
    lretq

common64:
    movw $SEL_DATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    leaq bsp_stack_top(%rip), %rsp
    xorl %ebp, %ebp
    call rt_main
3:  cli
    hlt
    jmp 3b

/* APs arrive here in 64-bit mode from the trampoline. */
.globl ap64
ap64:
    movw $SEL_DATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl $1, %eax
    lock xaddl %eax, ap_next
    movl %eax, %edi
    movl %eax, %ecx
    incl %ecx
    shll $14, %ecx          /* 16 KiB per AP */
    leaq ap_stacks(%rip), %rsp
    addq %rcx, %rsp
    call rt_ap_main
4:  cli
    hlt
    jmp 4b

/* Interrupt stubs: push a zero error code where the CPU pushes none, then
 * the vector, and join isr_common. */
.macro ISR_NOERR v
isr_\v:
    pushq $0
    pushq $\v
    jmp isr_common
.endm
.macro ISR_ERR v
isr_\v:
    pushq $\v
    jmp isr_common
.endm

ISR_NOERR 0
ISR_NOERR 1
ISR_NOERR 2
ISR_NOERR 3
ISR_NOERR 4
ISR_NOERR 5
ISR_NOERR 6
ISR_NOERR 7
ISR_ERR 8
ISR_NOERR 9
ISR_ERR 10
ISR_ERR 11
ISR_ERR 12
ISR_ERR 13
ISR_ERR 14
ISR_NOERR 15
ISR_NOERR 16
ISR_ERR 17
ISR_NOERR 18
ISR_NOERR 19
ISR_NOERR 20
ISR_ERR 21
ISR_NOERR 22
ISR_NOERR 23
ISR_NOERR 24
ISR_NOERR 25
ISR_NOERR 26
ISR_NOERR 27
ISR_NOERR 28
ISR_ERR 29
ISR_ERR 30
ISR_NOERR 31
.irp v, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,255
ISR_NOERR \v
.endr

isr_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi
    cld
    call rt_isr
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp
    iretq

.section .rodata
.align 8
.globl rt_isr_table
rt_isr_table:
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
    .quad isr_\v
.endr
.globl rt_isr_spurious
rt_isr_spurious:
    .quad isr_255

/* Real-mode AP start-up code, position-independent within its page. */
.section .rodata
.code16
.globl ap_tramp_start, ap_tramp_end
ap_tramp_start:
    cli
    movw %cs, %ax
    movw %ax, %ds
    lgdtl (tramp_gdt_desc - ap_tramp_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $SEL_CODE32, $(AP_TRAMPOLINE + ap32 - ap_tramp_start)
.code32
ap32:
    movw $SEL_DATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl $(AP_TRAMPOLINE + 0xff0), %esp
    movl $enter_long_mode32, %eax
    call *%eax
    ljmp $SEL_CODE64, $ap64
.align 4
tramp_gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt
ap_tramp_end:

.data
.align 16
gdt:
    .quad 0
    .quad 0x00af9a000000ffff   /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff   /* 0x10: flat data */
    .quad 0x00cf9a000000ffff   /* 0x18: 32-bit code */
gdt_end:
.align 8
gdt_desc:
    .word gdt_end - gdt - 1
    .quad gdt

.globl rt_boot_kind, rt_boot_start_info, rt_boot_zero_page, rt_boot_cr0, rt_boot_cr4, rt_boot_efer, rt_boot_rflags, ap_next
.align 8
rt_boot_kind: .quad 0
rt_boot_start_info: .quad 0
rt_boot_zero_page: .quad 0
rt_boot_cr0: .quad 0
rt_boot_cr4: .quad 0
rt_boot_efer: .quad 0
rt_boot_rflags: .quad 0
ap_next: .long 0
ap_cr3: .long 0

.bss
.align 4096
.globl pml4
pml4: .skip 4096
pdpt: .skip 4096
.globl rt_pd
rt_pd:
pd: .skip 4 * 4096
.align 16
bsp_stack: .skip 32768
bsp_stack_top:
.globl ap_stacks
ap_stacks: .skip 16 * 16384
