/* seccomp_probe: asks ember (built with the test-only `seccomp-probe`
 * feature) to make a system call outside its vCPU allow-list, by writing
 * 0x5e to port 0x5ec. Under --seccomp kill ember must die of SIGSYS; under
 * log it must carry on, and this guest exits 0. */
#include "rt.h"

int main(void)
{
    rt_puts("PROBE\n");
    outb(0x5ec, 0x5e);
    rt_puts("PROBE SURVIVED\n");
    return 0;
}
