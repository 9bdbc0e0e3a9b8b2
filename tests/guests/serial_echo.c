/*
 * serial_echo: echoes what arrives on COM1 until the stop byte.
 *
 * Parameters: stop=C (default 'q'); irq=1 to wait for the UART's receive
 * interrupt (IOAPIC pin 4) instead of polling the line status register.
 * Prints "ECHO READY", echoes every byte before the stop byte unchanged,
 * then prints "ECHO DONE bytes=N irqs=M" and exits 0 (63: irq mode saw no
 * interrupt).
 */
#include "rt.h"

#define COM1 0x3f8
#define VEC_COM1 0x24

static volatile u8 ring[256];
static volatile u32 head, tail, irqs;

static void on_com1(int vector)
{
    (void)vector;
    irqs++;
    int c;
    while ((c = rt_getc_nonblock()) >= 0)
        ring[head++ & 255] = (u8)c;
}

int main(void)
{
    const char *s = rt_param("stop");
    u8 stop = s ? (u8)s[0] : 'q';
    bool irq = rt_param_is("irq", "1");
    if (irq) {
        rt_apic_init();
        rt_set_handler(VEC_COM1, on_com1);
        rt_ioapic_route(4, VEC_COM1);
        outb(COM1 + 4, 0x0b); /* MCR: DTR, RTS, OUT2 (IRQ enable) */
        outb(COM1 + 1, 0x01); /* IER: received data available */
    }
    rt_puts("ECHO READY\n");
    u32 n = 0;
    for (;;) {
        int c;
        if (irq) {
            while (head == tail)
                sti_hlt();
            c = ring[tail++ & 255];
        } else {
            c = rt_getc_nonblock();
            if (c < 0)
                continue;
        }
        if ((u8)c == stop)
            break;
        outb(COM1, (u8)c);
        n++;
    }
    rt_printf("\nECHO DONE bytes=%u irqs=%u\n", n, irqs);
    if (irq)
        CHECK(irqs > 0, 63);
    return 0;
}
