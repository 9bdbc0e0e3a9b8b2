/* count: prints "count N" on the serial port for N = 1, 2, 3, ... with
 * `spin=` busy-loop iterations between lines (default 20000: about 20
 * lines a second when emulated), up to `max=` lines (default 0: forever),
 * then exits 0. The pause tests read it: while the VM is paused no line
 * appears, and after resume the count goes on with no gap or repeat. */
#include "rt.h"

int main(void)
{
    u64 spin = rt_param_u64("spin", 20000);
    u64 max = rt_param_u64("max", 0);
    for (u64 n = 1; max == 0 || n <= max; n++) {
        rt_printf("count %lu\n", n);
        rt_spin(spin);
    }
    return 0;
}
