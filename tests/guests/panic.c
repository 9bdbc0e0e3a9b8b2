/* panic: prints a Linux-style panic line, then hangs with interrupts off
 * (what a panicking kernel without panic= does). For `ember smoke`. */
#include "rt.h"

int main(void)
{
    rt_puts("Kernel panic - not syncing: ember test guest panic\n");
    for (;;)
        __asm__ volatile("cli; hlt");
}
