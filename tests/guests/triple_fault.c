/* triple_fault: loads an empty IDT and executes ud2. #UD cannot be
 * delivered, nor the #DF that follows: the CPU shuts down (a triple fault),
 * which the VMM must report as a crash naming the vCPU. */
#include "rt.h"

int main(void)
{
    rt_puts("TRIPLE FAULT NEXT\n");
    struct {
        u16 limit;
        u64 base;
    } __attribute__((packed)) empty = {0, 0};
    __asm__ volatile("lidt %0; ud2" ::"m"(empty));
    return 64;
}
