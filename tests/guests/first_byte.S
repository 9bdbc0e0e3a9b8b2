/*
 * first_byte: the smallest possible guest, for the start-up bench. Its PVH
 * entry writes one byte to COM1 in its first instructions and exits through
 * the debug-exit port (else an i8042 reset), so exec -> first serial byte
 * measures the VMM, not the guest's own set-up (the C guests spend ~1 ms of
 * emulated instructions on their runtime before printing).
 */
.section .note.pvh, "a"
.align 4
.long 4, 4, 18
.asciz "Xen"
.long pvh_start

.section .text.entry, "ax"
.code32
.globl pvh_start, _start64
pvh_start:
    movw $0x3f8, %dx
    movb $'E', %al
    outb %al, %dx
    movb $'\n', %al
    outb %al, %dx
    xorl %eax, %eax
    outb %al, $0xf4
    movb $0xfe, %al
    outb %al, $0x64
1:  cli
    hlt
    jmp 1b
.code64
_start64:
    jmp 1b
