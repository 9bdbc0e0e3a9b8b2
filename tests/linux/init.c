/*
 * /init for ember's Linux test kernel: a static, freestanding program that
 * makes no system call and spins politely forever.
 *
 * Why no system calls: on ember's test machines every guest instruction is
 * emulated, and the emulator gets the `syscall` instruction from ring 3
 * wrong (the process faults at the kernel's entry_SYSCALL_64); `int $0x80`
 * is an `int n`, which it lacks altogether. So this init only proves that
 * the kernel mounted its root and got as far as "Run /init as init
 * process"; everything else a test observes happens in the kernel (probe
 * messages, the root mount, IP autoconfiguration, ping replies).
 *
 * Build (scripts/build-test-init does this, into the cache):
 *   gcc -static -nostdlib -ffreestanding -fno-pie -no-pie -O2 \
 *       -fno-stack-protector -fno-asynchronous-unwind-tables \
 *       -mgeneral-regs-only -Wl,--build-id=none -o init init.c
 * The result must contain no `syscall`/`int` instruction (build-test-init
 * checks with objdump).
 */

void _start(void) __attribute__((noreturn, used));

void _start(void)
{
	for (;;)
		__asm__ volatile("pause");
}
