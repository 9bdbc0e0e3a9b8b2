/* The smallest guest: one line on the serial port, then exit with the
 * status given as `code=` (default 0). Used by the README's first command
 * and the start-up bench (exec → first serial byte). */
#include "rt.h"

int main(void)
{
    rt_puts("Hello from ember guest\n");
    return (int)rt_param_u64("code", 0);
}
