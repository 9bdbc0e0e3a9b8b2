/* virtio-blk request layout (virtio 1.x, 5.2.6) for the block test guests. */
#ifndef EMBER_GUEST_BLK_H
#define EMBER_GUEST_BLK_H
#include "rt.h"

#define VIRTIO_ID_BLOCK 2
#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8
#define T_DISCARD 11
#define T_WRITE_ZEROES 13
#define S_OK 0
#define S_IOERR 1
#define S_UNSUPP 2

struct blk_req {
    u32 type;
    u32 reserved;
    u64 sector;
};
#endif
