/* Small IPv4/Ethernet helpers shared by the network test guests. */
#ifndef EMBER_GUEST_INET_H
#define EMBER_GUEST_INET_H
#include "rt.h"

/* Big-endian 16-bit load/store. */
static inline u16 get16(const u8 *p) { return (u16)((p[0] << 8) | p[1]); }
static inline void put16(u8 *p, u16 v)
{
    p[0] = (u8)(v >> 8);
    p[1] = (u8)v;
}
/* Internet checksum of `len` bytes (RFC 1071). */
u16 csum(const u8 *p, u32 len);
/* Parses a dotted-quad IPv4 address ending at NUL or a space. */
bool parse_ip(const char *s, u8 out[4]);
#endif
