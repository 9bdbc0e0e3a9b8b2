/* hang: prints "HANG" and halts forever with interrupts off. For timeouts,
 * the stop handle and the idle-memory bench. */
#include "rt.h"

int main(void)
{
    rt_puts("HANG\n");
    for (;;)
        __asm__ volatile("cli; hlt");
}
