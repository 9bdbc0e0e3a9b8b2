/*
 * keyboard: drives the i8042 the way Linux's i8042 and atkbd drivers do,
 * then waits for keys from the host.
 *
 * Controller: disable both ports, read the CTR (twice, as Linux does),
 * self test (0x55), port tests (0x00), AUX loopback (the byte comes back
 * with the AUX status bit), write the CTR with the keyboard interrupt and
 * translation on. Keyboard: identify (ACK, 0xab, 0x41 translated), set
 * LEDs, typematic rate, enable (each ACKed). Every answer is polled with
 * a bound, so an unanswered command fails fast instead of hanging. Then
 * IOAPIC pin 1 is routed, "KBD READY" printed, and the guest halts until
 * interrupts have brought it eight bytes: the set 1 scan codes of
 * Ctrl+Alt+Del (make and break). Prints "KBD OK irqs=N" and exits 0;
 * 10..59 the check that failed.
 */
#include "rt.h"

#define DATA 0x60
#define CMD 0x64
#define STS_OBF 0x01
#define STS_IBF 0x02
#define STS_AUX 0x20
#define VEC_KBD 0x21

static volatile u8 keys[16];
static volatile u32 nkeys, irqs;

/* The next output byte, polled; -1 if none arrives. */
static int read_byte(u8 *status)
{
    for (int i = 0; i < 100000; i++) {
        u8 st = inb(CMD);
        if (st & STS_OBF) {
            if (status)
                *status = st;
            return inb(DATA);
        }
    }
    return -1;
}

static void command(u8 c)
{
    for (int i = 0; i < 100000 && (inb(CMD) & STS_IBF); i++)
        ;
    outb(CMD, c);
}

static void to_keyboard(u8 b)
{
    for (int i = 0; i < 100000 && (inb(CMD) & STS_IBF); i++)
        ;
    outb(DATA, b);
}

static void expect(int got, int want, int code)
{
    if (got != want) {
        rt_printf("keyboard: got 0x%x, want 0x%x\n", (u32)got, (u32)want);
        rt_exit(code);
    }
}

static void on_kbd(int vector)
{
    (void)vector;
    irqs++;
    while (inb(CMD) & STS_OBF) {
        u8 b = inb(DATA);
        if (nkeys < sizeof(keys))
            keys[nkeys++] = b;
    }
}

int main(void)
{
    u8 st;
    command(0xad); /* keyboard port off */
    command(0xa7); /* aux port off */
    CHECK(!(inb(CMD) & STS_OBF), 10);
    command(0x20);
    int ctr = read_byte(0);
    command(0x20);
    expect(read_byte(0), ctr, 11);
    rt_printf("keyboard: CTR 0x%x\n", (u32)ctr);
    CHECK(ctr & 0x40, 12); /* translation on, as a BIOS leaves it */
    command(0xaa);
    expect(read_byte(0), 0x55, 13);
    command(0xab);
    expect(read_byte(0), 0x00, 14);
    command(0xa8); /* aux port on, loopback */
    command(0xd3);
    to_keyboard(0x5a);
    expect(read_byte(&st), 0x5a, 15);
    CHECK(st & STS_AUX, 16);
    command(0xa7);
    command(0x60);
    to_keyboard(0x41 | 0x04 | 0x20); /* kbd interrupt, system flag, aux off, translate */
    command(0x20);
    expect(read_byte(0), 0x65, 17);

    to_keyboard(0xf2); /* identify */
    expect(read_byte(0), 0xfa, 20);
    expect(read_byte(0), 0xab, 21);
    expect(read_byte(0), 0x41, 22);
    to_keyboard(0xed); /* LEDs */
    expect(read_byte(0), 0xfa, 23);
    to_keyboard(0x00);
    expect(read_byte(0), 0xfa, 24);
    to_keyboard(0xf3); /* typematic */
    expect(read_byte(0), 0xfa, 25);
    to_keyboard(0x00);
    expect(read_byte(0), 0xfa, 26);
    to_keyboard(0xf4); /* enable */
    expect(read_byte(0), 0xfa, 27);
    CHECK(!(inb(CMD) & STS_OBF), 28); /* nothing more */

    rt_apic_init();
    rt_set_handler(VEC_KBD, on_kbd);
    rt_ioapic_route(1, VEC_KBD);
    rt_puts("KBD READY\n");
    for (u64 spins = 0; nkeys < 8; spins++) {
        sti_hlt();
        CHECK(spins < 100000, 30);
    }
    static const u8 want[8] = { 0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d };
    rt_printf("keyboard: %u bytes:", nkeys);
    for (u32 i = 0; i < nkeys; i++)
        rt_printf(" %x", keys[i]);
    rt_printf("\n");
    CHECK(nkeys == 8, 31);
    CHECK(!memcmp((const void *)keys, want, 8), 32);
    rt_printf("KBD OK irqs=%u\n", irqs);
    return 0;
}
