/* seccomp_probe: asks ember (built with the test-only `seccomp-probe`
 * feature) to make a system call outside its vCPU allow-list, by writing
 * 0x5e to port 0x5ec. Under --seccomp kill ember must die of SIGSYS; under
 * log it must carry on, and this guest exits 0. probe=N picks another
 * refused call (see SeccompProbe in src/device_manager.rs). */
#include "rt.h"

int main(void)
{
    rt_puts("PROBE\n");
    outb(0x5ec, (u8)rt_param_u64("probe", 0x5e));
    rt_puts("PROBE SURVIVED\n");
    return 0;
}
