use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::interrupt::CountingIrq;
use crate::virtio::block::{Block, BlockConfig};
use crate::virtio::test_utils::*;
use crate::virtio::ActivateError;

const DEVICE_FEATURE: u64 = 1 << 5;

#[derive(Default)]
struct DummyState {
    activations: usize,
    resets: usize,
    acked: u64,
    event_idx: Vec<bool>,
    ready: Vec<bool>,
    fail_activation: bool,
    processed: Vec<usize>,
    config: [u8; 8],
    unfinished: QueueSet,
}

struct Dummy(Arc<Mutex<DummyState>>, [u16; 2]);

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.1
    }
    fn avail_features(&self) -> u64 {
        DEVICE_FEATURE
    }
    fn ack_features(&mut self, features: u64) {
        self.0.lock().unwrap().acked = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let s = self.0.lock().unwrap();
        for (i, b) in data.iter_mut().enumerate() {
            *b = s.config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut s = self.0.lock().unwrap();
        for (i, b) in data.iter().enumerate() {
            if let Some(c) = s.config.get_mut(offset as usize + i) {
                *c = *b;
            }
        }
    }
    fn activate(&mut self, _mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        let mut s = self.0.lock().unwrap();
        if s.fail_activation {
            return Err(ActivateError::QueueNotReady(0));
        }
        s.activations += 1;
        s.event_idx = queues.iter().map(|q| q.event_idx_enabled()).collect();
        s.ready = queues.iter().map(|q| q.ready()).collect();
        Ok(())
    }
    fn process_queue(&mut self, idx: usize) -> QueueSet {
        self.0.lock().unwrap().processed.push(idx);
        QueueSet::of(idx)
    }
    fn reset(&mut self) {
        self.0.lock().unwrap().resets += 1;
    }
    fn take_unfinished(&mut self) -> QueueSet {
        std::mem::take(&mut self.0.lock().unwrap().unfinished)
    }
}

struct Setup {
    t: MmioTransport,
    state: Arc<Mutex<DummyState>>,
    irq: Arc<CountingIrq>,
}

fn dummy() -> Setup {
    let state = Arc::new(Mutex::new(DummyState::default()));
    let irq = Arc::new(CountingIrq::default());
    let t = MmioTransport::new(Box::new(Dummy(state.clone(), [16, 8])), guest_mem(), irq.clone()).unwrap();
    Setup { t, state, irq }
}

fn rd(t: &mut MmioTransport, off: u32) -> u32 {
    let mut b = [0u8; 4];
    t.read(u64::from(off), &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, off: u32, val: u32) {
    t.write(u64::from(off), &val.to_le_bytes());
}

const ACK: u32 = S_ACK;
const DRV: u32 = S_ACK | S_DRIVER;
const FOK: u32 = DRV | S_FEATURES_OK;
const DOK: u32 = FOK | S_DRIVER_OK;

fn negotiate(t: &mut MmioTransport, features: u64) {
    wr(t, VIRTIO_MMIO_STATUS, ACK);
    wr(t, VIRTIO_MMIO_STATUS, DRV);
    wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    wr(t, VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
    wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr(t, VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
    wr(t, VIRTIO_MMIO_STATUS, FOK);
}

fn set_queue_addrs(t: &mut MmioTransport, desc: u64, avail: u64, used: u64) {
    for (lo, val) in
        [(VIRTIO_MMIO_QUEUE_DESC_LOW, desc), (VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail), (VIRTIO_MMIO_QUEUE_USED_LOW, used)]
    {
        wr(t, lo, val as u32);
        wr(t, lo + 4, (val >> 32) as u32);
    }
}

/// Configures queue `sel` with `size` entries laid out at `base`.
fn setup_queue(t: &mut MmioTransport, sel: u32, size: u16, base: u64) {
    wr(t, VIRTIO_MMIO_QUEUE_SEL, sel);
    wr(t, VIRTIO_MMIO_QUEUE_NUM, u32::from(size));
    let desc = base;
    let avail = desc + 16 * u64::from(size);
    let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
    set_queue_addrs(t, desc, avail, used);
    wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(rd(t, VIRTIO_MMIO_QUEUE_READY), 1, "queue {sel} ready");
}

fn version_1() -> u64 {
    1 << VIRTIO_F_VERSION_1
}

#[test]
fn register_file_identity() {
    let Setup { mut t, .. } = dummy();
    assert_eq!(rd(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_VERSION), 2);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_ID), 42);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_VENDOR_ID), u32::from_le_bytes(*b"EMBR"));
    assert_eq!(t.device_type(), 42);
    assert_eq!(t.queue_events().len(), 2);
    wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 8);
    wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 2);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), 0);
    // Unknown registers read as zero.
    assert_eq!(rd(&mut t, 0x08c), 0);
}

#[test]
fn non_32bit_register_accesses_are_ignored() {
    let Setup { mut t, .. } = dummy();
    for len in [1usize, 2, 3, 8] {
        let mut b = vec![0xffu8; len];
        t.read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut b);
        assert!(b.iter().all(|&x| x == 0), "width {len}");
    }
    t.write(u64::from(VIRTIO_MMIO_STATUS), &[1]);
    t.write(u64::from(VIRTIO_MMIO_STATUS), &[1, 0]);
    t.write(u64::from(VIRTIO_MMIO_STATUS), &1u64.to_le_bytes());
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
    // Config space takes any width.
    t.write(0x100, &[1, 2, 3]);
    let mut b = [0u8; 8];
    t.read(0x100, &mut b);
    assert_eq!(b, [1, 2, 3, 0, 0, 0, 0, 0]);
    let mut b = [0u8; 2];
    t.read(0x101, &mut b);
    assert_eq!(b, [2, 3]);
}

#[test]
fn device_features_include_transport_features() {
    let Setup { mut t, .. } = dummy();
    wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    let lo = rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES);
    wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    let hi = rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES);
    wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 0);
    let all = u64::from(lo) | (u64::from(hi) << 32);
    assert_eq!(all, DEVICE_FEATURE | version_1() | (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << VIRTIO_RING_F_INDIRECT_DESC));
}

#[test]
fn feature_negotiation_accepts_subset_with_version_1() {
    let Setup { mut t, state, .. } = dummy();
    let f = version_1() | DEVICE_FEATURE | (1 << VIRTIO_RING_F_EVENT_IDX);
    negotiate(&mut t, f);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), FOK);
    assert_eq!(state.lock().unwrap().acked, f);
    // Features are frozen after FEATURES_OK.
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0xffff_ffff);
    assert_eq!(t.core.driver_features(), f);
}

#[test]
fn feature_negotiation_refusals() {
    // Not offered.
    let Setup { mut t, .. } = dummy();
    negotiate(&mut t, version_1() | (1 << 7));
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), DRV, "unoffered bit refused");
    // DRIVER_OK cannot follow a refused FEATURES_OK.
    wr(&mut t, VIRTIO_MMIO_STATUS, DOK);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), DRV);

    // Legacy driver: no VERSION_1.
    let Setup { mut t, .. } = dummy();
    negotiate(&mut t, DEVICE_FEATURE);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), DRV, "VERSION_1 required");

    // Bits in a feature page that does not exist.
    let Setup { mut t, .. } = dummy();
    wr(&mut t, VIRTIO_MMIO_STATUS, ACK);
    wr(&mut t, VIRTIO_MMIO_STATUS, DRV);
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 5);
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    wr(&mut t, VIRTIO_MMIO_STATUS, FOK);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), DRV);

    // Features written before DRIVER are ignored.
    let Setup { mut t, .. } = dummy();
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    assert_eq!(t.core.driver_features(), 0);
}

#[test]
fn status_state_machine_and_reset() {
    let Setup { mut t, state, irq, .. } = dummy();
    // Out of order: DRIVER before ACKNOWLEDGE, FEATURES_OK before DRIVER.
    wr(&mut t, VIRTIO_MMIO_STATUS, S_DRIVER);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
    wr(&mut t, VIRTIO_MMIO_STATUS, ACK);
    wr(&mut t, VIRTIO_MMIO_STATUS, ACK | S_FEATURES_OK);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), ACK);
    // Reserved bits.
    wr(&mut t, VIRTIO_MMIO_STATUS, ACK | 0x10);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), ACK);
    // Several steps in one write are fine when in order.
    wr(&mut t, VIRTIO_MMIO_STATUS, DRV);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), DRV);
    // Clearing a bit is not a transition.
    wr(&mut t, VIRTIO_MMIO_STATUS, ACK);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), DRV);
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    // DRIVER_OK before FEATURES_OK.
    wr(&mut t, VIRTIO_MMIO_STATUS, DRV | S_DRIVER_OK);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), DRV);
    wr(&mut t, VIRTIO_MMIO_STATUS, FOK);
    setup_queue(&mut t, 0, 16, QUEUE_BASE);
    wr(&mut t, VIRTIO_MMIO_STATUS, DOK);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), DOK);
    assert!(t.is_activated());
    {
        let s = state.lock().unwrap();
        assert_eq!(s.activations, 1);
        assert_eq!(s.ready, vec![true, false]);
        assert_eq!(s.event_idx, vec![false, false]);
    }
    // Rewriting DRIVER_OK does not activate twice.
    wr(&mut t, VIRTIO_MMIO_STATUS, DOK);
    assert_eq!(state.lock().unwrap().activations, 1);

    t.interrupt().signal_used_queue().unwrap();
    assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
    assert_eq!(irq.count(), 1);

    // Reset.
    wr(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
    assert!(!t.is_activated());
    assert_eq!(state.lock().unwrap().resets, 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM), 16);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW), 0);
    assert_eq!(t.core.driver_features(), 0);

    // The device comes up again after the reset.
    negotiate(&mut t, version_1());
    setup_queue(&mut t, 0, 16, QUEUE_BASE);
    wr(&mut t, VIRTIO_MMIO_STATUS, DOK);
    assert_eq!(state.lock().unwrap().activations, 2);
}

#[test]
fn failed_is_accepted_any_time() {
    let Setup { mut t, .. } = dummy();
    wr(&mut t, VIRTIO_MMIO_STATUS, ACK);
    wr(&mut t, VIRTIO_MMIO_STATUS, ACK | S_FAILED);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), ACK | S_FAILED);
    // Nothing but a reset after that.
    wr(&mut t, VIRTIO_MMIO_STATUS, DRV);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), ACK | S_FAILED);
    wr(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
    wr(&mut t, VIRTIO_MMIO_STATUS, S_FAILED);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), S_FAILED);
}

#[test]
fn event_idx_is_set_on_queues_when_negotiated() {
    let Setup { mut t, state, .. } = dummy();
    negotiate(&mut t, version_1() | (1 << VIRTIO_RING_F_EVENT_IDX));
    setup_queue(&mut t, 0, 16, QUEUE_BASE);
    setup_queue(&mut t, 1, 8, QUEUE_BASE + 0x1000);
    wr(&mut t, VIRTIO_MMIO_STATUS, DOK);
    let s = state.lock().unwrap();
    assert_eq!(s.event_idx, vec![true, true]);
    assert_eq!(s.ready, vec![true, true]);
}

#[test]
fn activation_failure_sets_needs_reset() {
    let Setup { mut t, state, irq, .. } = dummy();
    state.lock().unwrap().fail_activation = true;
    negotiate(&mut t, version_1());
    wr(&mut t, VIRTIO_MMIO_STATUS, DOK);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), DOK | S_NEEDS_RESET);
    assert!(!t.is_activated());
    assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
    assert_eq!(irq.count(), 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), 1);
    // Notifications are drained but not processed.
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    t.handle_queue_event(0);
    assert!(state.lock().unwrap().processed.is_empty());
    // Reset recovers; the generation does not go back.
    wr(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), 1);
    assert_eq!(state.lock().unwrap().resets, 1);
}

#[test]
fn queue_num_validation() {
    let Setup { mut t, .. } = dummy();
    negotiate(&mut t, version_1());
    wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    for bad in [3u32, 0, 32, 0x1_0010, 12] {
        wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, bad);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM), 16, "QueueNum {bad}");
    }
    wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM), 4);
    // Absent queue: ignored.
    wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 7);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM), 0);
}

#[test]
fn queue_ready_needs_valid_rings() {
    let Setup { mut t, .. } = dummy();
    negotiate(&mut t, version_1());
    wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    // No addresses written yet.
    wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    // Only the low halves.
    wr(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, QUEUE_BASE as u32);
    wr(&mut t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2000);
    wr(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW, 0x3000);
    wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    // Outside guest memory.
    set_queue_addrs(&mut t, MEM_SIZE, 0x2000, 0x3000);
    wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    set_queue_addrs(&mut t, 0x1000, 0x2000, MEM_SIZE - 8);
    wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    set_queue_addrs(&mut t, 0x1000, 0x2000, 1 << 40);
    wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    // Misaligned descriptor table: the write is refused (the old value
    // stays, but counts as not written).
    set_queue_addrs(&mut t, 0x1008, 0x2000, 0x3000);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW), 0x1000);
    wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    // Odd values of QueueReady.
    set_queue_addrs(&mut t, 0x1000, 0x2000, 0x3000);
    wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 2);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW), 0x1000);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_USED_HIGH), 0);

    // A ready queue's registers are frozen.
    wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
    wr(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x4000);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM), 16);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW), 0x1000);
    // Un-readying before DRIVER_OK is allowed, not after.
    wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    wr(&mut t, VIRTIO_MMIO_STATUS, DOK);
    wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
    // After DRIVER_OK even a not-ready queue is frozen.
    wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM), 8);
}

#[test]
fn queue_notify_register_signals_eventfd() {
    let Setup { mut t, state, .. } = dummy();
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    assert_eq!(t.queue_events()[1].read().unwrap(), 1);
    // Absent queue: ignored.
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 9);

    negotiate(&mut t, version_1());
    setup_queue(&mut t, 0, 16, QUEUE_BASE);
    wr(&mut t, VIRTIO_MMIO_STATUS, DOK);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    t.handle_queue_event(0);
    // Queue 1 is not ready: drained, not processed.
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    t.handle_queue_event(1);
    assert!(t.queue_events()[1].read().is_err(), "drained");
    assert_eq!(state.lock().unwrap().processed, vec![0]);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
    wr(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
}

/// A pass that stopped on its budget is continued through the queue's own
/// eventfd, without a driver notification.
#[test]
fn unfinished_queues_are_signalled_again() {
    let Setup { mut t, state, .. } = dummy();
    negotiate(&mut t, version_1());
    setup_queue(&mut t, 0, 16, QUEUE_BASE);
    setup_queue(&mut t, 1, 8, QUEUE_BASE + 0x1000);
    wr(&mut t, VIRTIO_MMIO_STATUS, DOK);
    state.lock().unwrap().unfinished = QueueSet::of(0) | QueueSet::of(1);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    t.handle_queue_event(0);
    assert_eq!(t.queue_events()[0].read().unwrap(), 1, "queue 0 signalled again");
    assert_eq!(t.queue_events()[1].read().unwrap(), 1, "queue 1 signalled again");
    t.handle_queue_event(0);
    assert!(t.queue_events()[0].read().is_err(), "finished: not signalled");
    assert_eq!(state.lock().unwrap().processed, vec![0, 0]);
}

/// The same end to end: requests that need more than one pass budget are
/// all served by the event loop after one kick.
#[test]
fn a_pass_over_budget_continues_in_the_event_loop() {
    let dir = TempDir::new("mmio-budget");
    let path = dir.path().join("big.img");
    std::fs::File::create(&path).unwrap().set_len(32 << 20).unwrap();
    let mem = guest_mem();
    let mut drv = Driver::new(&mem, 256);
    let blk = Block::new(&BlockConfig { path, readonly: false, id: None }).unwrap();
    let mut t = MmioTransport::new(Box::new(blk), mem.clone(), Arc::new(CountingIrq::default())).unwrap();
    negotiate(&mut t, version_1());
    wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 256);
    set_queue_addrs(&mut t, drv.desc_addr(), drv.avail_addr(), drv.used_addr());
    wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    wr(&mut t, VIRTIO_MMIO_STATUS, DOK);
    let t = Arc::new(Mutex::new(t));
    let mut em = EventManager::<Arc<Mutex<MmioTransport>>>::new().unwrap();
    em.add_subscriber(t.clone());

    // Four reads of 8 MiB (128 segments of 64 KiB over one buffer): the
    // byte budget lets two through per pass.
    let (hdr, status, table, buf) = (DATA_BASE, DATA_BASE + 0x100, DATA_BASE + 0x1000, DATA_BASE + 0x10000);
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    mem.write_slice(&h, GuestAddress(hdr)).unwrap();
    let mut chain = vec![r(hdr, 16)];
    chain.extend(std::iter::repeat_n(w(buf, 64 << 10), 128));
    chain.push(w(status, 1));
    for _ in 0..4 {
        // Indirect: a table of 130 entries.
        for (i, &(addr, len, write)) in chain.iter().enumerate() {
            let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < chain.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let d = virtio_queue::desc::split::Descriptor::new(addr, len, flags, (i + 1) as u16);
            mem.write_obj(virtio_queue::desc::RawDescriptor::from(d), GuestAddress(table + 16 * i as u64)).unwrap();
        }
        let head = drv.add(&[(table, 16 * chain.len() as u32, false)]);
        drv.set_desc(head, table, 16 * chain.len() as u32, VRING_DESC_F_INDIRECT as u16, 0);
    }
    t.lock().unwrap().queue_events()[0].write(1).unwrap();
    let mut rounds = 0;
    while drv.used_idx() < 4 {
        em.run_with_timeout(1000).unwrap();
        rounds += 1;
        assert!(rounds <= 8, "no progress");
    }
    assert!(rounds >= 2, "one kick, served in {rounds} passes");
    assert!((0..4).all(|i| drv.used(i).1 == (8 << 20) + 1));
}

/// The whole path: a driver brings a virtio-blk device up through the
/// registers, posts a read, kicks the queue eventfd (as KVM's ioeventfd
/// would) and the event loop serves it.
#[test]
fn block_request_through_event_loop() {
    let dir = TempDir::new("mmio-blk");
    let path = dir.image("disk.img", 64 * 1024);
    let mem = guest_mem();
    let mut drv = Driver::new(&mem, 16);
    let blk = Block::new(&BlockConfig { path, readonly: false, id: None }).unwrap();
    let irq = Arc::new(CountingIrq::default());
    let mut t = MmioTransport::new(Box::new(blk), mem.clone(), irq.clone()).unwrap();
    assert_eq!(t.device_type(), 2);

    negotiate(&mut t, version_1() | (1 << VIRTIO_RING_F_EVENT_IDX));
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), FOK);
    wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 16);
    set_queue_addrs(&mut t, drv.desc_addr(), drv.avail_addr(), drv.used_addr());
    wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
    wr(&mut t, VIRTIO_MMIO_STATUS, DOK);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), DOK);
    // Capacity through the config window.
    let mut cap = [0u8; 8];
    t.read(0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 128);

    let t = Arc::new(Mutex::new(t));
    let mut em = EventManager::<Arc<Mutex<MmioTransport>>>::new().unwrap();
    em.add_subscriber(t.clone());

    let (hdr, buf, status) = (DATA_BASE, DATA_BASE + 0x1000, DATA_BASE + 0x100);
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    h[8..].copy_from_slice(&2u64.to_le_bytes());
    mem.write_slice(&h, GuestAddress(hdr)).unwrap();
    drv.set_used_event(0);
    drv.add(&[r(hdr, 16), w(buf, 512), w(status, 1)]);
    t.lock().unwrap().queue_events()[0].write(1).unwrap();
    assert_eq!(em.run_with_timeout(1000).unwrap(), 1);

    assert_eq!(drv.used_idx(), 1);
    assert_eq!(drv.used(0).1, 513);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(status)).unwrap(), VIRTIO_BLK_S_OK as u8);
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got, GuestAddress(buf)).unwrap();
    assert_eq!(got, (1024..1536).map(pattern).collect::<Vec<_>>());
    assert_eq!(irq.count(), 1);
    let mut tr = t.lock().unwrap();
    assert_eq!(rd(&mut tr, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
    wr(&mut tr, VIRTIO_MMIO_INTERRUPT_ACK, 1);
    assert_eq!(rd(&mut tr, VIRTIO_MMIO_INTERRUPT_STATUS), 0);

    // With EVENT_IDX, a used_event in the future suppresses the interrupt.
    drv.set_used_event(5);
    drv.add(&[r(hdr, 16), w(buf, 512), w(status, 1)]);
    tr.queue_events()[0].write(1).unwrap();
    drop(tr);
    assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(drv.used_idx(), 2);
    assert_eq!(irq.count(), 1, "suppressed");

    // Reset stops the device; a kick is then just drained.
    let mut tr = t.lock().unwrap();
    wr(&mut tr, VIRTIO_MMIO_STATUS, 0);
    drv.add(&[r(hdr, 16), w(buf, 512), w(status, 1)]);
    tr.queue_events()[0].write(1).unwrap();
    drop(tr);
    assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(drv.used_idx(), 2);
}

#[test]
fn hostile_register_accesses_do_not_panic() {
    let Setup { mut t, .. } = dummy();
    // A deterministic xorshift sequence of offsets, widths and values,
    // biased towards the interesting registers.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..200_000u32 {
        let n = next();
        let offset = match n % 4 {
            0 => n >> 8 & 0xfc,
            1 => n >> 8 & 0x1fff,
            2 => u64::from(VIRTIO_MMIO_STATUS),
            _ => n >> 8,
        };
        let width = [1usize, 2, 4, 4, 4, 8, 3, 0][(n >> 40) as usize & 7];
        let val = match (n >> 48) % 4 {
            0 => (n >> 16) as u32 & 0xf,
            1 => 1 << ((n >> 20) % 32),
            _ => (n >> 16) as u32,
        };
        let bytes = u64::from(val).to_le_bytes();
        if i % 3 == 0 {
            let mut b = vec![0u8; width];
            t.read(offset, &mut b);
        } else {
            t.write(offset, &bytes[..width]);
        }
        if i % 1000 == 0 {
            t.handle_queue_event((n % 3) as usize);
        }
    }
    // A reset always brings the transport back.
    wr(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
}

/// Finding 2 of issue 16 (the transport half): a refused QueueReady went
/// through virtio-queue's `is_valid`, which logs each refusal itself (one
/// line per MMIO write), and a failed activation logged an error per
/// reset -> DRIVER_OK cycle. Both are now within the transport's budget.
#[test]
fn refused_queue_ready_and_failed_activation_log_within_budget() {
    let Setup { mut t, .. } = dummy();
    let ((), lines) = count_log_records(|| {
        for _ in 0..16_000 {
            wr(&mut t, VIRTIO_MMIO_STATUS, 0);
            negotiate(&mut t, version_1());
            wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
            // Rings past the end of guest memory.
            set_queue_addrs(&mut t, MEM_SIZE, MEM_SIZE + 0x1000, MEM_SIZE + 0x2000);
            wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        }
    });
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0, "refused");
    assert!(lines <= 66, "{lines} log records for 16,000 refused QueueReady writes");

    // A fresh transport whose device refuses to start, on every cycle.
    let Setup { mut t, state, .. } = dummy();
    state.lock().unwrap().fail_activation = true;
    let ((), lines) = count_log_records(|| {
        for _ in 0..16_000 {
            wr(&mut t, VIRTIO_MMIO_STATUS, 0);
            negotiate(&mut t, version_1());
            wr(&mut t, VIRTIO_MMIO_STATUS, DOK);
        }
    });
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), DOK | S_NEEDS_RESET);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), 16_000, "every cycle failed");
    assert!(lines <= 66, "{lines} log records for 16,000 failed activations");

    // A driver that gives up on every cycle.
    let Setup { mut t, .. } = dummy();
    let ((), lines) = count_log_records(|| {
        for _ in 0..16_000 {
            wr(&mut t, VIRTIO_MMIO_STATUS, 0);
            wr(&mut t, VIRTIO_MMIO_STATUS, ACK);
            wr(&mut t, VIRTIO_MMIO_STATUS, S_FAILED);
        }
    });
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS) & S_FAILED, S_FAILED);
    assert!(lines <= 66, "{lines} log records for 16,000 FAILED writes");
}

// ---- snapshot ----

/// A blk transport on `path`, raising `irq`.
fn blk_transport(path: &std::path::Path, mem: &GuestMemoryMmap, irq: Arc<CountingIrq>) -> MmioTransport {
    let blk = Block::new(&BlockConfig { path: path.to_path_buf(), readonly: false, id: None }).unwrap();
    MmioTransport::new(Box::new(blk), mem.clone(), irq).unwrap()
}

/// Posts a one-sector read of sector `sector` and serves it.
fn blk_read(t: &mut MmioTransport, mem: &GuestMemoryMmap, drv: &mut Driver, sector: u64) {
    let (hdr, buf, status) = (DATA_BASE, DATA_BASE + 0x1000, DATA_BASE + 0x100);
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(hdr)).unwrap();
    drv.add(&[r(hdr, 16), w(buf, 512), w(status, 1)]);
    t.queue_events()[0].write(1).unwrap();
    t.handle_queue_event(0);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(status)).unwrap(), VIRTIO_BLK_S_OK as u8);
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got, GuestAddress(buf)).unwrap();
    assert_eq!(got, (sector * 512..sector * 512 + 512).map(pattern).collect::<Vec<_>>());
}

/// A blk device the driver started (event index on), with two requests
/// served and the interrupt not acknowledged.
fn running_blk(path: &std::path::Path, mem: &GuestMemoryMmap, drv: &mut Driver) -> MmioTransport {
    let mut t = blk_transport(path, mem, Arc::new(CountingIrq::default()));
    negotiate(&mut t, version_1() | (1 << VIRTIO_RING_F_EVENT_IDX));
    wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 16);
    set_queue_addrs(&mut t, drv.desc_addr(), drv.avail_addr(), drv.used_addr());
    wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    wr(&mut t, VIRTIO_MMIO_STATUS, DOK);
    assert!(t.is_activated());
    drv.set_used_event(0);
    for sector in [1, 2] {
        blk_read(&mut t, mem, drv, sector);
    }
    assert_eq!(drv.used_idx(), 2);
    t
}

/// A driver's blk device is saved, restored into a fresh transport on the
/// same memory and image, and continues: the used index goes on from where
/// it stood, no request is served twice and none is skipped.
#[test]
fn snapshot_blk_continues_after_restore() {
    let dir = TempDir::new("mmio-snap");
    let path = dir.image("disk.img", 64 * 1024);
    let mem = guest_mem();
    let mut drv = Driver::new(&mem, 16);
    let t = running_blk(&path, &mem, &mut drv);
    let saved = t.save_state().unwrap();
    assert_eq!(saved.interrupt_status, 1);
    assert_eq!(saved.virtio.queues[0].next_avail, 2, "the device's live queue, not the transport's copy");
    assert_eq!(saved.virtio.queues[0].next_used, 2);
    drop(t);

    let irq = Arc::new(CountingIrq::default());
    let mut t = blk_transport(&path, &mem, irq.clone());
    t.restore_state(&saved).unwrap();
    assert!(t.is_activated());
    assert_eq!(t.save_state().unwrap(), saved);
    assert_eq!(irq.count(), 1, "the pending interrupt is raised again");
    assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), DOK);
    // The restored queue is signalled once; nothing new is available, so
    // nothing is served again.
    assert_eq!(t.queue_events()[0].read().unwrap(), 1);
    t.queue_events()[0].write(1).unwrap();
    t.handle_queue_event(0);
    assert_eq!(drv.used_idx(), 2);
    blk_read(&mut t, &mem, &mut drv, 3);
    assert_eq!(drv.used_idx(), 3);
    assert_eq!(drv.used(2), (6, 513), "the third chain, served once");
    assert_eq!(drv.used(0), (0, 513));
    assert_eq!(drv.used(1), (3, 513));
}

/// A transport the driver never touched, and one in the middle of setup,
/// save and restore to equal states.
#[test]
fn snapshot_round_trips_before_driver_ok() {
    let Setup { t, .. } = dummy();
    let fresh = t.save_state().unwrap();
    let Setup { mut t, .. } = dummy();
    t.restore_state(&fresh).unwrap();
    assert_eq!(t.save_state().unwrap(), fresh);

    let Setup { mut t, state, .. } = dummy();
    negotiate(&mut t, version_1() | DEVICE_FEATURE);
    setup_queue(&mut t, 1, 8, QUEUE_BASE);
    wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
    wr(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x8000);
    let saved = t.save_state().unwrap();
    let Setup { t: mut t2, state: state2, .. } = dummy();
    t2.restore_state(&saved).unwrap();
    assert_eq!(t2.save_state().unwrap(), saved);
    assert_eq!(state2.lock().unwrap().acked, state.lock().unwrap().acked, "features acknowledged to the device");
    assert_eq!(rd(&mut t2, VIRTIO_MMIO_QUEUE_NUM), 4);
    // The driver finishes the setup as it would have.
    set_queue_addrs(&mut t2, 0x8000, 0x8100, 0x8200);
    wr(&mut t2, VIRTIO_MMIO_QUEUE_READY, 1);
    wr(&mut t2, VIRTIO_MMIO_STATUS, DOK);
    assert!(t2.is_activated());
}

/// Corrupt states are refused with the bad value named, and the
/// transport is left as built.
#[test]
fn snapshot_corrupt_states_are_refused() {
    let dir = TempDir::new("mmio-snap-bad");
    let path = dir.image("disk.img", 64 * 1024);
    let mem = guest_mem();
    let mut drv = Driver::new(&mem, 16);
    let saved = running_blk(&path, &mem, &mut drv).save_state().unwrap();
    type Corrupt = fn(&mut MmioTransportState);
    let cases: &[(Corrupt, &str)] = &[
        (|s| s.virtio.queues[0].size = 3, "size 3 is not a power of two in 1..=256"),
        (|s| s.virtio.queues[0].size = 512, "size 512"),
        (|s| s.virtio.driver_features |= 1 << 40, "include 0x10000000000"),
        (|s| s.virtio.device_type = 1, "saved virtio device type 1"),
        (|s| s.virtio.queues.clear(), "saved 0 queues"),
        (|s| s.virtio.queues[0].desc_table = 0x1008, "descriptor table address 0x1008"),
        (|s| s.virtio.queues[0].used_ring = MEM_SIZE, "used 0x1000000) are refused: rings are not in guest memory"),
        (|s| s.virtio.queues[0].used_ring = s.virtio.queues[0].desc_table, "overlaps"),
        (|s| s.virtio.status = S_ACK | S_DRIVER_OK, "device status 0x5"),
        (|s| s.virtio.status |= 0x100, "device status 0x10f"),
        (|s| s.virtio.activated = false, "activated 0x0"),
        (|s| s.virtio.queues[0].event_idx = false, "event_idx 0x0"),
        (|s| s.virtio.queues[0].addrs_set = 0x0f, "address mask 0xf"),
        (|s| s.interrupt_status = 4, "interrupt status 0x4"),
    ];
    for (corrupt, what) in cases {
        let mut bad = saved.clone();
        corrupt(&mut bad);
        let irq = Arc::new(CountingIrq::default());
        let mut t = blk_transport(&path, &mem, irq.clone());
        let fresh = t.save_state().unwrap();
        let e = t.restore_state(&bad).unwrap_err().to_string();
        assert!(e.contains(what), "{what:?} not in {e:?}");
        assert_eq!(t.save_state().unwrap(), fresh, "left as built after {e}");
        assert!(!t.is_activated());
        assert_eq!(irq.count(), 0);
    }
}

/// A started device that does not report its live queues is not saved;
/// a device that refuses the saved queues fails the restore, and is reset.
#[test]
fn snapshot_needs_live_queues_and_a_device_that_starts() {
    let Setup { mut t, .. } = dummy();
    negotiate(&mut t, version_1());
    setup_queue(&mut t, 0, 16, QUEUE_BASE);
    setup_queue(&mut t, 1, 8, QUEUE_BASE + 0x1000);
    // Saved just before DRIVER_OK, then made into a started device.
    let mut saved = t.save_state().unwrap();
    wr(&mut t, VIRTIO_MMIO_STATUS, DOK);
    assert!(t.is_activated());
    let e = t.save_state().unwrap_err();
    assert_eq!(e, SaveError::QueuesUnavailable { device_type: 42 });
    saved.virtio.status = DOK;
    saved.virtio.activated = true;

    let Setup { t: mut t2, state, .. } = dummy();
    state.lock().unwrap().fail_activation = true;
    let fresh = t2.save_state().unwrap();
    let e = t2.restore_state(&saved).unwrap_err().to_string();
    assert!(e.contains("cannot be activated"), "{e}");
    assert_eq!(t2.save_state().unwrap(), fresh);
    assert_eq!(state.lock().unwrap().resets, 1);
    state.lock().unwrap().fail_activation = false;
    t2.restore_state(&saved).unwrap();
    assert!(t2.is_activated());
    assert_eq!(state.lock().unwrap().activations, 1);
    assert_eq!(state.lock().unwrap().ready, vec![true, true]);
}

/// A state goes through JSON unchanged; a field it does not know is refused.
#[test]
fn snapshot_state_serde_round_trip() {
    let dir = TempDir::new("mmio-snap-json");
    let path = dir.image("disk.img", 64 * 1024);
    let mem = guest_mem();
    let mut drv = Driver::new(&mem, 16);
    let saved = running_blk(&path, &mem, &mut drv).save_state().unwrap();
    let json = serde_json::to_string(&saved).unwrap();
    assert_eq!(serde_json::from_str::<MmioTransportState>(&json).unwrap(), saved);
    let extra = json.replacen("{", "{\"surprise\":1,", 1);
    assert!(serde_json::from_str::<MmioTransportState>(&extra).is_err());
}
