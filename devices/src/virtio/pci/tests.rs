use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::bus::BusDevice;
use crate::interrupt::CountingIrq;
use crate::pci::bus::{MmioWindow, PciRoot, PciWindows, RecordingIoEvents};
use crate::pci::config::{BAR0, CAPABILITIES_POINTER, COMMAND, COMMAND_MEMORY, STATUS_CAPABILITIES};
use crate::pci::msix::{MsiMessage, RecordingRouting, MSIX_CONTROL_ENABLE, MSIX_CONTROL_MASK};
use crate::virtio::block::{Block, BlockConfig};
use crate::virtio::net::{Net, NetBackend};
use crate::virtio::test_utils::*;
use crate::virtio::ActivateError;

const S_ACK: u8 = 1;
const S_DRIVER: u8 = 2;
const S_DRIVER_OK: u8 = 4;
const S_FEATURES_OK: u8 = 8;
const S_NEEDS_RESET: u8 = 0x40;
const DRV: u8 = S_ACK | S_DRIVER;
const FOK: u8 = DRV | S_FEATURES_OK;
const DOK: u8 = FOK | S_DRIVER_OK;

#[derive(Default)]
struct DummyState {
    activations: usize,
    resets: usize,
    fail_activation: bool,
    processed: Vec<usize>,
    /// What the next `take_unfinished` returns (a pass over budget).
    unfinished: QueueSet,
}

/// Queues of 16 and 8 entries; every processed queue asks for an interrupt.
struct Dummy(Arc<Mutex<DummyState>>, [u16; 2]);

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.1
    }
    fn avail_features(&self) -> u64 {
        1 << 5
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = (offset as u8).wrapping_add(i as u8);
        }
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, _mem: GuestMemoryMmap, _queues: Vec<Queue>) -> Result<(), ActivateError> {
        let mut s = self.0.lock().unwrap();
        if s.fail_activation {
            return Err(ActivateError::QueueNotReady(0));
        }
        s.activations += 1;
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

struct Irqs {
    vectors: Vec<Arc<CountingIrq>>,
    intx: Arc<CountingIrq>,
    routing: Arc<RecordingRouting>,
}

impl Irqs {
    fn new(n: usize) -> (Irqs, PciInterrupts) {
        let vectors: Vec<Arc<CountingIrq>> = (0..n).map(|_| Arc::new(CountingIrq::default())).collect();
        let intx = Arc::new(CountingIrq::default());
        let routing = Arc::new(RecordingRouting::default());
        let irqs = PciInterrupts {
            msi: routing.clone(),
            vectors: vectors.iter().map(|v| v.clone() as Arc<dyn IrqLine>).collect(),
            intx: Some(IntxLine { line: intx.clone(), irq: 11 }),
        };
        (Irqs { vectors, intx, routing }, irqs)
    }

    fn counts(&self) -> Vec<u64> {
        self.vectors.iter().map(|v| v.count()).collect()
    }
}

struct Setup {
    t: VirtioPciTransport,
    state: Arc<Mutex<DummyState>>,
    irqs: Irqs,
}

fn dummy() -> Setup {
    let state = Arc::new(MutexDummy::default());
    let dev = Box::new(Dummy(state.clone(), [16, 8]));
    let (irqs, wiring) = Irqs::new(VirtioPciTransport::vector_count(dev.as_ref()));
    let t = VirtioPciTransport::new(dev, guest_mem(), wiring).unwrap();
    Setup { t, state, irqs }
}

type MutexDummy = Mutex<DummyState>;

// ---- a driver's accessors ----

fn cfg_read(t: &mut VirtioPciTransport, off: u16, len: usize) -> u32 {
    let mut b = [0u8; 4];
    t.read_config(off, &mut b[..len]);
    u32::from_le_bytes(b)
}

fn cfg_write(t: &mut VirtioPciTransport, off: u16, val: u32, len: usize) {
    t.write_config(off, &val.to_le_bytes()[..len]);
}

fn bar_read(t: &mut VirtioPciTransport, off: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    t.read_bar(0, off, &mut b[..len]);
    u64::from_le_bytes(b)
}

fn bar_write(t: &mut VirtioPciTransport, off: u64, val: u64, len: usize) {
    t.write_bar(0, off, &val.to_le_bytes()[..len]);
}

/// (cfg_type, bar, offset, length, capability offset) of a virtio
/// capability.
type VirtioCap = (u8, u8, u32, u32, u16);

/// Every virtio capability, and the MSI-X capability offset, walking the
/// list.
fn caps(t: &mut VirtioPciTransport) -> (Vec<VirtioCap>, Option<u16>) {
    let mut out = Vec::new();
    let mut msix = None;
    assert_ne!(cfg_read(t, 0x06, 2) as u16 & STATUS_CAPABILITIES, 0);
    let mut at = cfg_read(t, CAPABILITIES_POINTER, 1) as u16;
    let mut n = 0;
    while at != 0 {
        n += 1;
        assert!(n < 48, "capability list loops");
        assert_eq!(at % 4, 0, "capabilities are dword-aligned");
        let id = cfg_read(t, at, 1) as u8;
        if id == 0x09 {
            let cfg_type = cfg_read(t, at + 3, 1) as u8;
            let bar = cfg_read(t, at + 4, 1) as u8;
            let offset = cfg_read(t, at + 8, 4);
            let length = cfg_read(t, at + 12, 4);
            out.push((cfg_type, bar, offset, length, at));
        } else if id == 0x11 {
            msix = Some(at);
        }
        at = cfg_read(t, at + 1, 1) as u16;
    }
    (out, msix)
}

fn common_r(t: &mut VirtioPciTransport, off: u64, len: usize) -> u64 {
    bar_read(t, COMMON_CFG_OFFSET + off, len)
}

fn common_w(t: &mut VirtioPciTransport, off: u64, val: u64, len: usize) {
    bar_write(t, COMMON_CFG_OFFSET + off, val, len);
}

fn status(t: &mut VirtioPciTransport) -> u8 {
    common_r(t, DEVICE_STATUS, 1) as u8
}

fn negotiate(t: &mut VirtioPciTransport, features: u64) -> bool {
    common_w(t, DEVICE_STATUS, 0, 1);
    common_w(t, DEVICE_STATUS, u64::from(S_ACK), 1);
    common_w(t, DEVICE_STATUS, u64::from(DRV), 1);
    common_w(t, DRIVER_FEATURE_SELECT, 0, 4);
    common_w(t, DRIVER_FEATURE, features & 0xffff_ffff, 4);
    common_w(t, DRIVER_FEATURE_SELECT, 1, 4);
    common_w(t, DRIVER_FEATURE, features >> 32, 4);
    common_w(t, DEVICE_STATUS, u64::from(FOK), 1);
    status(t) & S_FEATURES_OK != 0
}

/// Queue `q`: `size` entries at `base` (64-bit writes), vector `vector`.
/// Queue `q` of `size` entries on the rings of `drv`, its notification on
/// MSI-X `vector`, enabled.
fn driver_queue(t: &mut VirtioPciTransport, q: u16, size: u16, drv: &Driver, vector: u16) {
    common_w(t, QUEUE_SELECT, u64::from(q), 2);
    common_w(t, QUEUE_SIZE, u64::from(size), 2);
    common_w(t, QUEUE_DESC, drv.desc_addr(), 8);
    common_w(t, QUEUE_DRIVER, drv.avail_addr(), 8);
    common_w(t, QUEUE_DEVICE, drv.used_addr(), 8);
    common_w(t, QUEUE_MSIX_VECTOR, u64::from(vector), 2);
    common_w(t, QUEUE_ENABLE, 1, 2);
}

fn setup_queue(t: &mut VirtioPciTransport, q: u16, size: u16, base: u64, vector: u16) {
    common_w(t, QUEUE_SELECT, u64::from(q), 2);
    common_w(t, QUEUE_SIZE, u64::from(size), 2);
    let avail = base + 16 * u64::from(size);
    let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
    common_w(t, QUEUE_DESC, base, 8);
    // The driver ring as two halves, like Linux's vp_iowrite64_twopart.
    common_w(t, QUEUE_DRIVER, avail & 0xffff_ffff, 4);
    common_w(t, QUEUE_DRIVER + 4, avail >> 32, 4);
    common_w(t, QUEUE_DEVICE, used, 8);
    common_w(t, QUEUE_MSIX_VECTOR, u64::from(vector), 2);
    common_w(t, QUEUE_ENABLE, 1, 2);
    assert_eq!(common_r(t, QUEUE_ENABLE, 2), 1, "queue {q} enabled");
}

fn msix_cap(t: &mut VirtioPciTransport) -> u16 {
    caps(t).1.expect("an MSI-X capability")
}

fn set_msix_control(t: &mut VirtioPciTransport, control: u16) {
    let cap = msix_cap(t);
    cfg_write(t, cap + 2, u32::from(control), 2);
}

/// Programs table entry `v` (unmasked unless `masked`).
fn program_vector(t: &mut VirtioPciTransport, v: u64, data: u32, masked: bool) {
    let e = MSIX_TABLE_OFFSET + 16 * v;
    bar_write(t, e, 0xfee0_0000, 4);
    bar_write(t, e + 4, 0, 4);
    bar_write(t, e + 8, u64::from(data), 4);
    bar_write(t, e + 12, u64::from(masked), 4);
}

fn version_1() -> u64 {
    1 << VIRTIO_F_VERSION_1
}

// ---- identity and discovery ----

#[test]
fn pci_identity() {
    let Setup { mut t, .. } = dummy();
    assert_eq!(cfg_read(&mut t, 0, 4), 0x1040_1af4 + (42 << 16));
    assert_eq!(cfg_read(&mut t, 0x08, 1), 1, "revision 1: non-transitional");
    assert_eq!(cfg_read(&mut t, 0x09, 4) & 0xff_ffff, 0xff_00_00, "class of an unknown type");
    assert_eq!(cfg_read(&mut t, 0x2c, 2), 0x1af4);
    assert_eq!(cfg_read(&mut t, 0x2e, 2), 0x40 + 42);
    assert_eq!(cfg_read(&mut t, 0x3c, 1), 11, "interrupt line from the VMM");
    assert_eq!(cfg_read(&mut t, 0x3d, 1), 1, "INTA#");
    assert_eq!(cfg_read(&mut t, 0x0e, 1), 0, "type-0 header");
    // BAR 0: 64-bit memory, 32 KiB.
    assert_eq!(cfg_read(&mut t, BAR0, 4), 0b100);
    cfg_write(&mut t, BAR0, 0xffff_ffff, 4);
    cfg_write(&mut t, BAR0 + 4, 0xffff_ffff, 4);
    assert_eq!(cfg_read(&mut t, BAR0, 4), 0xffff_8004);
    assert_eq!(cfg_read(&mut t, BAR0 + 4, 4), 0xffff_ffff);
    for b in 2..6u16 {
        cfg_write(&mut t, BAR0 + 4 * b, 0xffff_ffff, 4);
        assert_eq!(cfg_read(&mut t, BAR0 + 4 * b, 4), 0, "BAR {b} unimplemented");
    }
    assert_eq!(class_code(1), 0x02_00_00);
    assert_eq!(class_code(2), 0x01_80_00);
    assert_eq!(VirtioPciTransport::notify_offset(1), 0x3004);
}

#[test]
fn capabilities_describe_the_bar() {
    let Setup { mut t, .. } = dummy();
    let (virtio, msix) = caps(&mut t);
    let find = |ty: u8| *virtio.iter().find(|c| c.0 == ty).unwrap_or_else(|| panic!("cap type {ty}"));
    let c = find(VIRTIO_PCI_CAP_COMMON_CFG);
    assert_eq!((c.1, c.2, c.3), (0, 0, 0x38));
    let (_, bar, off, len, at) = find(VIRTIO_PCI_CAP_NOTIFY_CFG);
    assert_eq!((bar, off, len), (0, 0x3000, 8));
    assert_eq!(cfg_read(&mut t, at + 16, 4), 4, "notify_off_multiplier");
    assert_eq!(cfg_read(&mut t, at + 2, 1), 20, "cap_len");
    assert_eq!(find(VIRTIO_PCI_CAP_ISR_CFG).2, 0x1000);
    assert_eq!(find(VIRTIO_PCI_CAP_DEVICE_CFG).2, 0x2000);
    assert_eq!(find(VIRTIO_PCI_CAP_PCI_CFG).3, 0);
    // MSI-X: 3 vectors (2 queues + config), table and PBA in BAR 0.
    let m = msix.unwrap();
    assert_eq!(cfg_read(&mut t, m + 2, 2), 2);
    assert_eq!(cfg_read(&mut t, m + 4, 4), 0x4000);
    assert_eq!(cfg_read(&mut t, m + 8, 4), 0x5000);
    // Each queue's notify offset lies inside the notify region.
    for q in 0..2 {
        common_w(&mut t, QUEUE_SELECT, q, 2);
        assert_eq!(common_r(&mut t, QUEUE_NOTIFY_OFF, 2), q);
    }
    assert_eq!(common_r(&mut t, NUM_QUEUES, 2), 2);
    // The notification eventfds are where the capability says.
    let ev = t.ioevents();
    assert_eq!(ev.iter().map(|e| (e.bar, e.offset)).collect::<Vec<_>>(), vec![(0, 0x3000), (0, 0x3004)]);
}

// ---- common configuration ----

#[test]
fn features_and_status_through_common_config() {
    let Setup { mut t, state, .. } = dummy();
    common_w(&mut t, DEVICE_FEATURE_SELECT, 1, 4);
    assert_eq!(common_r(&mut t, DEVICE_FEATURE_SELECT, 4), 1);
    assert_eq!(common_r(&mut t, DEVICE_FEATURE, 4), 1, "VERSION_1");
    common_w(&mut t, DEVICE_FEATURE_SELECT, 0, 4);
    let lo = common_r(&mut t, DEVICE_FEATURE, 4);
    assert_eq!(lo & (1 << 5), 1 << 5);
    // Not offered: refused.
    assert!(!negotiate(&mut t, version_1() | 1 << 7));
    // Without VERSION_1: refused.
    assert!(!negotiate(&mut t, 1 << 5));
    assert!(negotiate(&mut t, version_1() | 1 << 5));
    common_w(&mut t, DRIVER_FEATURE_SELECT, 1, 4);
    assert_eq!(common_r(&mut t, DRIVER_FEATURE, 4), 1, "driver features read back");
    setup_queue(&mut t, 0, 16, QUEUE_BASE, 0);
    common_w(&mut t, DEVICE_STATUS, u64::from(DOK), 1);
    assert_eq!(status(&mut t), DOK);
    assert!(t.is_activated());
    assert_eq!(state.lock().unwrap().activations, 1);
    let resets = state.lock().unwrap().resets;
    // A frozen queue after DRIVER_OK.
    common_w(&mut t, QUEUE_SELECT, 0, 2);
    common_w(&mut t, QUEUE_SIZE, 4, 2);
    assert_eq!(common_r(&mut t, QUEUE_SIZE, 2), 16);
    // Reset: status, queues and vector mappings.
    common_w(&mut t, DEVICE_STATUS, 0, 1);
    assert_eq!(status(&mut t), 0);
    assert!(!t.is_activated());
    assert_eq!(common_r(&mut t, QUEUE_ENABLE, 2), 0);
    assert_eq!(common_r(&mut t, QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    assert_eq!(common_r(&mut t, CONFIG_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    assert_eq!(common_r(&mut t, QUEUE_DESC, 8), 0);
    assert_eq!(state.lock().unwrap().resets, resets + 1);
}

#[test]
fn queue_fields_read_back() {
    let Setup { mut t, .. } = dummy();
    assert!(negotiate(&mut t, version_1()));
    common_w(&mut t, QUEUE_SELECT, 1, 2);
    assert_eq!(common_r(&mut t, QUEUE_SIZE, 2), 8, "max size after reset");
    common_w(&mut t, QUEUE_SIZE, 3, 2);
    assert_eq!(common_r(&mut t, QUEUE_SIZE, 2), 8, "not a power of two");
    common_w(&mut t, QUEUE_DESC, 0x1_2345_6000, 8);
    assert_eq!(common_r(&mut t, QUEUE_DESC, 8), 0x1_2345_6000);
    assert_eq!(common_r(&mut t, QUEUE_DESC, 4), 0x2345_6000);
    assert_eq!(common_r(&mut t, QUEUE_DESC + 4, 4), 1);
    // Absent queue: zeros, and writes go nowhere.
    common_w(&mut t, QUEUE_SELECT, 9, 2);
    assert_eq!(common_r(&mut t, QUEUE_SELECT, 2), 9);
    assert_eq!(common_r(&mut t, QUEUE_SIZE, 2), 0);
    assert_eq!(common_r(&mut t, QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    common_w(&mut t, QUEUE_MSIX_VECTOR, 0, 2);
    common_w(&mut t, QUEUE_ENABLE, 1, 2);
    assert_eq!(common_r(&mut t, QUEUE_ENABLE, 2), 0);
    // Enabling before the rings are set is refused.
    common_w(&mut t, QUEUE_SELECT, 0, 2);
    common_w(&mut t, QUEUE_ENABLE, 1, 2);
    assert_eq!(common_r(&mut t, QUEUE_ENABLE, 2), 0);
}

#[test]
fn odd_widths_and_read_only_fields() {
    let Setup { mut t, .. } = dummy();
    // Status is a byte: a 4-byte write there is not a status write.
    common_w(&mut t, DEVICE_STATUS, u64::from(S_ACK), 4);
    assert_eq!(status(&mut t), 0);
    common_w(&mut t, DEVICE_STATUS, u64::from(S_ACK), 2);
    assert_eq!(status(&mut t), 0);
    // 2-byte reads of 32-bit fields, 1-byte reads of 16-bit ones: zero.
    common_w(&mut t, DEVICE_FEATURE_SELECT, 1, 4);
    assert_eq!(common_r(&mut t, DEVICE_FEATURE, 2), 0);
    assert_eq!(common_r(&mut t, NUM_QUEUES, 1), 0);
    assert_eq!(common_r(&mut t, DEVICE_FEATURE + 1, 4), 0);
    // Read-only fields keep their value.
    common_w(&mut t, NUM_QUEUES, 7, 2);
    assert_eq!(common_r(&mut t, NUM_QUEUES, 2), 2);
    common_w(&mut t, DEVICE_FEATURE, 0, 4);
    assert_eq!(common_r(&mut t, DEVICE_FEATURE, 4), 1);
    common_w(&mut t, CONFIG_GENERATION, 9, 1);
    assert_eq!(common_r(&mut t, CONFIG_GENERATION, 1), 0);
    common_w(&mut t, QUEUE_NOTIFY_OFF, 9, 2);
    assert_eq!(common_r(&mut t, QUEUE_NOTIFY_OFF, 2), 0);
    // Past the structure and across regions.
    assert_eq!(common_r(&mut t, 0x100, 4), 0);
    assert_eq!(bar_read(&mut t, 0xffe, 4), 0);
    bar_write(&mut t, 0xffc, 0xffff_ffff_ffff_ffff, 8);
    // Past the BAR, and other BARs.
    let mut b = [0u8; 4];
    t.read_bar(0, VIRTIO_BAR_SIZE - 2, &mut b);
    assert_eq!(b, [0xff; 4]);
    t.read_bar(1, 0, &mut b);
    assert_eq!(b, [0xff; 4]);
    t.write_bar(0, u64::MAX, &[1]);
    // Device config at any width.
    assert_eq!(bar_read(&mut t, DEVICE_CFG_OFFSET + 3, 2), 0x0403);
    assert_eq!(bar_read(&mut t, DEVICE_CFG_OFFSET + 8, 8), 0x0f0e_0d0c_0b0a_0908);
}

// ---- notifications and interrupts ----

#[test]
fn notify_writes_signal_the_queue_eventfd() {
    let Setup { mut t, state, .. } = dummy();
    bar_write(&mut t, NOTIFY_OFFSET + 4, 1, 2);
    assert_eq!(t.queue_events()[1].read().unwrap(), 1);
    // Any width at the queue's address.
    bar_write(&mut t, NOTIFY_OFFSET, 0, 4);
    assert_eq!(t.queue_events()[0].read().unwrap(), 1);
    // A missing queue, a misaligned address: nothing.
    bar_write(&mut t, NOTIFY_OFFSET + 8, 2, 2);
    bar_write(&mut t, NOTIFY_OFFSET + 2, 0, 2);
    bar_write(&mut t, NOTIFY_OFFSET + 0xffc, 0, 2);
    assert!(t.queue_events()[0].read().is_err());
    assert!(t.queue_events()[1].read().is_err());
    // Not active: drained, not processed.
    bar_write(&mut t, NOTIFY_OFFSET, 0, 2);
    t.handle_queue_event(0);
    assert!(state.lock().unwrap().processed.is_empty());
    t.handle_queue_event(5);
}

/// Brings the dummy up with MSI-X: queue 0 on vector 0, queue 1 on vector
/// 1, configuration on vector 2.
fn up_with_msix(t: &mut VirtioPciTransport) {
    assert!(negotiate(t, version_1()));
    setup_queue(t, 0, 16, QUEUE_BASE, 0);
    setup_queue(t, 1, 8, QUEUE_BASE + 0x1000, 1);
    common_w(t, CONFIG_MSIX_VECTOR, 2, 2);
    assert_eq!(common_r(t, CONFIG_MSIX_VECTOR, 2), 2);
    for v in 0..3 {
        program_vector(t, v, 0x30 + v as u32, false);
    }
    set_msix_control(t, MSIX_CONTROL_ENABLE);
    common_w(t, DEVICE_STATUS, u64::from(DOK), 1);
}

#[test]
fn used_buffers_raise_the_queue_vector() {
    let Setup { mut t, irqs, .. } = dummy();
    up_with_msix(&mut t);
    assert_eq!(status(&mut t), DOK);
    assert_eq!(irqs.routing.last(1), Some((MsiMessage { addr: 0xfee0_0000, data: 0x31 }, false)));
    assert_eq!(irqs.counts(), vec![0, 0, 0]);
    bar_write(&mut t, NOTIFY_OFFSET + 4, 1, 2);
    t.handle_queue_event(1);
    assert_eq!(irqs.counts(), vec![0, 1, 0]);
    bar_write(&mut t, NOTIFY_OFFSET, 0, 2);
    t.handle_queue_event(0);
    assert_eq!(irqs.counts(), vec![1, 1, 0]);
    // MSI-X on: no ISR queue bit, no INTx.
    assert_eq!(bar_read(&mut t, ISR_OFFSET, 1), 0);
    assert_eq!(irqs.intx.count(), 0);
    // A queue mapped to NO_VECTOR interrupts nobody.
    common_w(&mut t, QUEUE_SELECT, 1, 2);
    common_w(&mut t, QUEUE_MSIX_VECTOR, u64::from(NO_VECTOR), 2);
    bar_write(&mut t, NOTIFY_OFFSET + 4, 1, 2);
    t.handle_queue_event(1);
    assert_eq!(irqs.counts(), vec![1, 1, 0]);
    // Two queues sharing vector 0.
    common_w(&mut t, QUEUE_MSIX_VECTOR, 0, 2);
    bar_write(&mut t, NOTIFY_OFFSET + 4, 1, 2);
    t.handle_queue_event(1);
    assert_eq!(irqs.counts(), vec![2, 1, 0]);
}

#[test]
fn vector_mapping_refuses_missing_vectors() {
    let Setup { mut t, .. } = dummy();
    common_w(&mut t, CONFIG_MSIX_VECTOR, 3, 2);
    assert_eq!(common_r(&mut t, CONFIG_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    common_w(&mut t, QUEUE_SELECT, 1, 2);
    common_w(&mut t, QUEUE_MSIX_VECTOR, 0x7fff, 2);
    assert_eq!(common_r(&mut t, QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
    common_w(&mut t, QUEUE_MSIX_VECTOR, 2, 2);
    assert_eq!(common_r(&mut t, QUEUE_MSIX_VECTOR, 2), 2);
}

#[test]
fn masked_vectors_are_pending_until_unmasked() {
    let Setup { mut t, irqs, .. } = dummy();
    up_with_msix(&mut t);
    // Entry mask.
    bar_write(&mut t, MSIX_TABLE_OFFSET + 12, 1, 4);
    bar_write(&mut t, NOTIFY_OFFSET, 0, 2);
    t.handle_queue_event(0);
    assert_eq!(irqs.counts()[0], 0);
    assert_eq!(bar_read(&mut t, MSIX_PBA_OFFSET, 8), 1);
    bar_write(&mut t, MSIX_TABLE_OFFSET + 12, 0, 4);
    assert_eq!(irqs.counts()[0], 1);
    assert_eq!(bar_read(&mut t, MSIX_PBA_OFFSET, 8), 0);
    // Function mask.
    set_msix_control(&mut t, MSIX_CONTROL_ENABLE | MSIX_CONTROL_MASK);
    bar_write(&mut t, NOTIFY_OFFSET + 4, 1, 2);
    t.handle_queue_event(1);
    assert_eq!(irqs.counts()[1], 0);
    assert_eq!(bar_read(&mut t, MSIX_PBA_OFFSET, 8), 2);
    set_msix_control(&mut t, MSIX_CONTROL_ENABLE);
    assert_eq!(irqs.counts()[1], 1);
    // Out-of-range table writes and PBA writes change nothing.
    let before = irqs.routing.updates().len();
    bar_write(&mut t, MSIX_TABLE_OFFSET + 3 * 16, 0xfee0_0000, 4);
    bar_write(&mut t, MSIX_TABLE_OFFSET + 0xff8, u64::MAX, 8);
    bar_write(&mut t, MSIX_TABLE_OFFSET + 2, 0, 2);
    bar_write(&mut t, MSIX_PBA_OFFSET, u64::MAX, 8);
    assert_eq!(irqs.routing.updates().len(), before);
    assert_eq!(bar_read(&mut t, MSIX_PBA_OFFSET, 8), 0);
    assert_eq!(bar_read(&mut t, MSIX_TABLE_OFFSET + 3 * 16, 4), 0);
}

#[test]
fn without_msix_the_isr_and_intx_are_used() {
    let Setup { mut t, irqs, .. } = dummy();
    assert!(negotiate(&mut t, version_1()));
    setup_queue(&mut t, 0, 16, QUEUE_BASE, NO_VECTOR);
    common_w(&mut t, DEVICE_STATUS, u64::from(DOK), 1);
    bar_write(&mut t, NOTIFY_OFFSET, 0, 2);
    t.handle_queue_event(0);
    assert_eq!(irqs.intx.count(), 1);
    assert_eq!(irqs.counts(), vec![0, 0, 0]);
    // Status bit 3 shows the asserted INTx until the ISR is read.
    assert_ne!(cfg_read(&mut t, 0x06, 2) & 8, 0);
    assert_eq!(bar_read(&mut t, ISR_OFFSET, 1), 1);
    assert_eq!(bar_read(&mut t, ISR_OFFSET, 1), 0, "read-to-clear");
    assert_eq!(cfg_read(&mut t, 0x06, 2) & 8, 0);
    // INTx disabled in the command register: ISR only.
    cfg_write(&mut t, COMMAND, u32::from(COMMAND_MEMORY | COMMAND_INTX_DISABLE), 2);
    bar_write(&mut t, NOTIFY_OFFSET, 0, 2);
    t.handle_queue_event(0);
    assert_eq!(irqs.intx.count(), 1);
    assert_eq!(bar_read(&mut t, ISR_OFFSET, 4), 1);
}

/// A function the VMM gave no INTx line: `Interrupt Pin` 0, `Interrupt
/// Line` "no connection", and without MSI-X only the ISR tells the driver.
#[test]
fn without_an_intx_line_the_pin_is_zero() {
    let state = Arc::new(MutexDummy::default());
    let dev = Box::new(Dummy(state, [16, 8]));
    let (irqs, mut wiring) = Irqs::new(VirtioPciTransport::vector_count(dev.as_ref()));
    wiring.intx = None;
    let mut t = VirtioPciTransport::new(dev, guest_mem(), wiring).unwrap();
    assert_eq!(cfg_read(&mut t, 0x3c, 2), 0x00ff, "line 0xff, pin 0");
    assert!(negotiate(&mut t, version_1()));
    setup_queue(&mut t, 0, 16, QUEUE_BASE, NO_VECTOR);
    common_w(&mut t, DEVICE_STATUS, u64::from(DOK), 1);
    bar_write(&mut t, NOTIFY_OFFSET, 0, 2);
    t.handle_queue_event(0);
    assert_eq!(irqs.intx.count(), 0);
    assert_eq!(irqs.counts(), vec![0, 0, 0]);
    assert_eq!(cfg_read(&mut t, 0x06, 2) & 8, 0, "no INTx to assert");
    assert_eq!(bar_read(&mut t, ISR_OFFSET, 1), 1);
}

#[test]
fn activation_failure_is_a_config_change() {
    let Setup { mut t, state, irqs } = dummy();
    state.lock().unwrap().fail_activation = true;
    up_with_msix(&mut t);
    assert_eq!(status(&mut t), DOK | S_NEEDS_RESET);
    assert_eq!(irqs.counts(), vec![0, 0, 1], "the configuration vector");
    assert_eq!(common_r(&mut t, CONFIG_GENERATION, 1), 1);
    assert_eq!(bar_read(&mut t, ISR_OFFSET, 1), 2, "the config bit is set with MSI-X too");
    // Without MSI-X: ISR bit 1 and INTx.
    let Setup { mut t, state, irqs } = dummy();
    state.lock().unwrap().fail_activation = true;
    assert!(negotiate(&mut t, version_1()));
    common_w(&mut t, DEVICE_STATUS, u64::from(DOK), 1);
    assert_eq!(irqs.intx.count(), 1);
    assert_eq!(bar_read(&mut t, ISR_OFFSET, 1), 2);
}

#[test]
fn pci_cfg_window_reaches_the_bar() {
    let Setup { mut t, .. } = dummy();
    let (virtio, _) = caps(&mut t);
    let at = virtio.iter().find(|c| c.0 == VIRTIO_PCI_CAP_PCI_CFG).unwrap().4;
    // num_queues through the window.
    cfg_write(&mut t, at + 4, 0, 1);
    cfg_write(&mut t, at + 8, NUM_QUEUES as u32, 4);
    cfg_write(&mut t, at + 12, 2, 4);
    assert_eq!(cfg_read(&mut t, at + 16, 2), 2);
    // device_status written through the window.
    cfg_write(&mut t, at + 8, DEVICE_STATUS as u32, 4);
    cfg_write(&mut t, at + 12, 1, 4);
    cfg_write(&mut t, at + 16, u32::from(S_ACK), 1);
    assert_eq!(status(&mut t), S_ACK);
    assert_eq!(cfg_read(&mut t, at + 16, 1), u32::from(S_ACK));
    // A notification through the window.
    cfg_write(&mut t, at + 8, NOTIFY_OFFSET as u32 + 4, 4);
    cfg_write(&mut t, at + 12, 2, 4);
    cfg_write(&mut t, at + 16, 1, 2);
    assert_eq!(t.queue_events()[1].read().unwrap(), 1);
    // Invalid windows do nothing: another BAR, a bad length, misaligned,
    // past the BAR.
    for (bar, off, len) in [(1u32, 0x14u32, 1u32), (0, 0x14, 3), (0, 0x15, 2), (0, 0x7ffe, 4)] {
        cfg_write(&mut t, at + 4, bar, 1);
        cfg_write(&mut t, at + 8, off, 4);
        cfg_write(&mut t, at + 12, len, 4);
        cfg_write(&mut t, at + 16, 0, 4);
        assert_eq!(status(&mut t), S_ACK, "window {bar}/{off:#x}/{len}");
    }
    // The window's type and BAR-independent fields are read-only.
    cfg_write(&mut t, at + 3, 0xff, 1);
    assert_eq!(cfg_read(&mut t, at + 3, 1), u32::from(VIRTIO_PCI_CAP_PCI_CFG));
}

#[test]
fn hostile_accesses_do_not_panic() {
    let Setup { mut t, .. } = dummy();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..200_000u32 {
        let n = next();
        let width = [1usize, 2, 4, 8, 3, 0][(n >> 40) as usize % 6];
        let val = match (n >> 48) % 4 {
            0 => (n >> 16) & 0xf,
            1 => 1 << ((n >> 20) % 64),
            _ => n >> 8,
        };
        let bytes = val.to_le_bytes();
        let mut buf = [0u8; 8];
        match i % 6 {
            0 => t.read_config((n % 4200) as u16, &mut buf[..width]),
            1 => t.write_config(((n >> 8) % 0x110) as u16, &bytes[..width]),
            2 => t.read_bar((n % 3) as u8, (n >> 8) % 0x9000, &mut buf[..width]),
            3 | 4 => {
                let off = match (n >> 4) % 4 {
                    0 => (n >> 8) % 0x40,
                    1 => NOTIFY_OFFSET + (n >> 8) % 0x10,
                    2 => MSIX_TABLE_OFFSET + (n >> 8) % 0x40,
                    _ => (n >> 8) % 0x9000,
                };
                t.write_bar(0, off, &bytes[..width]);
            }
            _ => t.handle_queue_event((n % 3) as usize),
        }
    }
    // A reset always brings the transport back, and the identity stays.
    common_w(&mut t, DEVICE_STATUS, 0, 1);
    assert_eq!(status(&mut t), 0);
    assert_eq!(cfg_read(&mut t, 0, 4), 0x1040_1af4 + (42 << 16));
    assert_eq!(cfg_read(&mut t, BAR0, 4) & 0x7fff, 0b100);
    assert!(negotiate(&mut t, version_1()));
}

// ---- real devices ----

/// A virtio-blk request end to end: the driver brings the device up
/// through the capabilities with MSI-X, posts a read, kicks the queue
/// eventfd (as KVM's ioeventfd would) and the event loop serves it and
/// raises the queue's vector.
#[test]
fn block_request_through_the_event_loop() {
    let dir = TempDir::new("pci-blk");
    let path = dir.image("disk.img", 64 * 1024);
    let mem = guest_mem();
    let mut drv = Driver::new(&mem, 16);
    let blk = Block::new(&BlockConfig { path, readonly: false, id: None }).unwrap();
    let (irqs, wiring) = Irqs::new(VirtioPciTransport::vector_count(&blk));
    assert_eq!(irqs.vectors.len(), 2);
    let mut t = VirtioPciTransport::new(Box::new(blk), mem.clone(), wiring).unwrap();
    assert_eq!(cfg_read(&mut t, 0, 4), 0x1042_1af4);
    assert_eq!(cfg_read(&mut t, 0x09, 4) & 0xff_ffff, 0x01_80_00);

    assert!(negotiate(&mut t, version_1() | 1 << VIRTIO_RING_F_EVENT_IDX));
    common_w(&mut t, QUEUE_SELECT, 0, 2);
    assert_eq!(common_r(&mut t, QUEUE_SIZE, 2), 256);
    common_w(&mut t, QUEUE_SIZE, 16, 2);
    common_w(&mut t, QUEUE_DESC, drv.desc_addr(), 8);
    common_w(&mut t, QUEUE_DRIVER, drv.avail_addr(), 8);
    common_w(&mut t, QUEUE_DEVICE, drv.used_addr(), 8);
    common_w(&mut t, QUEUE_MSIX_VECTOR, 1, 2);
    common_w(&mut t, QUEUE_ENABLE, 1, 2);
    common_w(&mut t, CONFIG_MSIX_VECTOR, 0, 2);
    program_vector(&mut t, 0, 0x40, false);
    program_vector(&mut t, 1, 0x41, false);
    set_msix_control(&mut t, MSIX_CONTROL_ENABLE);
    common_w(&mut t, DEVICE_STATUS, u64::from(DOK), 1);
    assert_eq!(status(&mut t), DOK);
    // Capacity through the device configuration region.
    assert_eq!(bar_read(&mut t, DEVICE_CFG_OFFSET, 8), 128);

    let t = Arc::new(Mutex::new(t));
    let mut em = EventManager::<Arc<Mutex<VirtioPciTransport>>>::new().unwrap();
    em.add_subscriber(t.clone());

    let (hdr, buf, status_at) = (DATA_BASE, DATA_BASE + 0x1000, DATA_BASE + 0x100);
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    h[8..].copy_from_slice(&2u64.to_le_bytes());
    mem.write_slice(&h, GuestAddress(hdr)).unwrap();
    drv.set_used_event(0);
    drv.add(&[r(hdr, 16), w(buf, 512), w(status_at, 1)]);
    t.lock().unwrap().queue_events()[0].write(1).unwrap();
    assert_eq!(em.run_with_timeout(1000).unwrap(), 1);

    assert_eq!(drv.used_idx(), 1);
    assert_eq!(drv.used(0).1, 513);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(status_at)).unwrap(), VIRTIO_BLK_S_OK as u8);
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got, GuestAddress(buf)).unwrap();
    assert_eq!(got, (1024..1536).map(pattern).collect::<Vec<_>>());
    assert_eq!(irqs.counts(), vec![0, 1]);

    // EVENT_IDX suppression holds through PCI too.
    drv.set_used_event(5);
    drv.add(&[r(hdr, 16), w(buf, 512), w(status_at, 1)]);
    t.lock().unwrap().write_bar(0, NOTIFY_OFFSET, &0u16.to_le_bytes());
    assert_eq!(em.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(drv.used_idx(), 2);
    assert_eq!(irqs.counts(), vec![0, 1], "suppressed");
}

/// A pass that stopped on its budget is continued through the queue's own
/// eventfd, without a driver notification.
#[test]
fn unfinished_queues_are_signalled_again() {
    let Setup { mut t, state, .. } = dummy();
    up_with_msix(&mut t);
    state.lock().unwrap().unfinished = QueueSet::of(0) | QueueSet::of(1);
    bar_write(&mut t, NOTIFY_OFFSET, 0, 2);
    t.handle_queue_event(0);
    assert_eq!(t.queue_events()[0].read().unwrap(), 1, "queue 0 signalled again");
    assert_eq!(t.queue_events()[1].read().unwrap(), 1, "queue 1 signalled again");
    t.handle_queue_event(0);
    assert!(t.queue_events()[0].read().is_err(), "finished: not signalled");
    assert_eq!(state.lock().unwrap().processed, vec![0, 0]);
}

/// The same end to end over PCI: requests that need more than one pass
/// budget are all served by the event loop after one kick, each pass
/// raising the queue's vector.
#[test]
fn a_pass_over_budget_continues_in_the_event_loop() {
    let dir = TempDir::new("pci-budget");
    let path = dir.path().join("big.img");
    std::fs::File::create(&path).unwrap().set_len(32 << 20).unwrap();
    let mem = guest_mem();
    let mut drv = Driver::new(&mem, 256);
    let blk = Block::new(&BlockConfig { path, readonly: false, id: None }).unwrap();
    let (irqs, wiring) = Irqs::new(VirtioPciTransport::vector_count(&blk));
    let mut t = VirtioPciTransport::new(Box::new(blk), mem.clone(), wiring).unwrap();
    assert!(negotiate(&mut t, version_1()));
    driver_queue(&mut t, 0, 256, &drv, 1);
    program_vector(&mut t, 0, 0x40, false);
    program_vector(&mut t, 1, 0x41, false);
    set_msix_control(&mut t, MSIX_CONTROL_ENABLE);
    common_w(&mut t, DEVICE_STATUS, u64::from(DOK), 1);
    assert_eq!(status(&mut t), DOK);
    let t = Arc::new(Mutex::new(t));
    let mut em = EventManager::<Arc<Mutex<VirtioPciTransport>>>::new().unwrap();
    em.add_subscriber(t.clone());

    // Four reads of 8 MiB (128 segments of 64 KiB over one buffer): the
    // byte budget lets two through per pass.
    let (hdr, status_at, table, buf) = (DATA_BASE, DATA_BASE + 0x100, DATA_BASE + 0x1000, DATA_BASE + 0x10000);
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    mem.write_slice(&h, GuestAddress(hdr)).unwrap();
    let mut chain = vec![r(hdr, 16)];
    chain.extend(std::iter::repeat_n(w(buf, 64 << 10), 128));
    chain.push(w(status_at, 1));
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
    // One kick, through the notify region as the driver writes it.
    t.lock().unwrap().write_bar(0, NOTIFY_OFFSET, &0u16.to_le_bytes());
    let mut rounds = 0;
    while drv.used_idx() < 4 {
        em.run_with_timeout(1000).unwrap();
        rounds += 1;
        assert!(rounds <= 8, "no progress after {rounds} rounds: {} of 4 used", drv.used_idx());
    }
    assert!(rounds >= 2, "one kick, served in {rounds} passes");
    assert!((0..4).all(|i| drv.used(i).1 == (8 << 20) + 1));
    assert_eq!(mem.read_obj::<u8>(GuestAddress(status_at)).unwrap(), VIRTIO_BLK_S_OK as u8);
    assert!(irqs.counts()[1] >= 2, "the queue's vector raised per pass: {:?}", irqs.counts());
}

/// A socket pair standing in for a TAP: one frame per message.
struct SockBackend(OwnedFd);

impl NetBackend for SockBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn write_frame(&mut self, frame: &crate::virtio::IoVecs<'_>) -> std::io::Result<usize> {
        frame.write_to(std::os::fd::AsFd::as_fd(&self.0))
    }

    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The backend's peer sends a plain header (no offloads) and a 60-byte
/// frame: 72 bytes for the receive buffer.
fn peer_sends_frame(peer: &OwnedFd) {
    let frame: Vec<u8> = (0..12 + 60).map(|i| if i < 12 { 0 } else { i as u8 }).collect();
    // SAFETY: a readable buffer.
    let n = unsafe { libc::write(peer.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    assert_eq!(n, frame.len() as isize);
}

/// A connected non-blocking `SOCK_SEQPACKET` pair: a NIC's backend and its
/// peer.
fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: valid out array.
    let rc =
        unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK, 0, fds.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: fresh descriptors owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A frame from the backend raises the receive queue's vector only (the
/// device names the queue it fed).
#[test]
fn received_frames_raise_the_receive_vector() {
    let (a, peer) = seqpacket_pair();
    let net = Net::with_backend("pci0".into(), Box::new(SockBackend(a)), Some([2, 0, 0, 0, 0, 9])).unwrap();
    let mem = guest_mem();
    let mut rx = Driver::new(&mem, 16);
    let (irqs, wiring) = Irqs::new(VirtioPciTransport::vector_count(&net));
    assert_eq!(irqs.vectors.len(), 3);
    let mut t = VirtioPciTransport::new(Box::new(net), mem.clone(), wiring).unwrap();
    assert_eq!(cfg_read(&mut t, 0, 4), 0x1041_1af4);
    assert_eq!(cfg_read(&mut t, 0x09, 4) & 0xff_ffff, 0x02_00_00);
    assert_eq!(bar_read(&mut t, DEVICE_CFG_OFFSET, 4), 0x0000_0002, "MAC bytes");
    assert!(negotiate(&mut t, version_1()));
    driver_queue(&mut t, 0, 16, &rx, 0);
    setup_queue(&mut t, 1, 16, 0x8000, 1);
    for v in 0..3 {
        program_vector(&mut t, v, 0x50 + v as u32, false);
    }
    set_msix_control(&mut t, MSIX_CONTROL_ENABLE);
    common_w(&mut t, DEVICE_STATUS, u64::from(DOK), 1);
    assert!(t.is_activated());
    rx.add(&[w(DATA_BASE, 2048)]);

    let t = Arc::new(Mutex::new(t));
    let mut em = EventManager::<Arc<Mutex<VirtioPciTransport>>>::new().unwrap();
    em.add_subscriber(t.clone());
    // The driver posted a buffer: the kick arms the backend.
    t.lock().unwrap().write_bar(0, NOTIFY_OFFSET, &0u16.to_le_bytes());
    em.run_with_timeout(1000).unwrap();
    // A plain header (no offloads), then a 60-byte frame.
    peer_sends_frame(&peer);
    em.run_with_timeout(1000).unwrap();
    assert_eq!(rx.used_idx(), 1);
    assert_eq!(rx.used(0).1, 72);
    assert_eq!(irqs.counts(), vec![1, 0, 0], "only the receive queue's vector");
}

/// Through the root: the transport's BAR gets an address, its notification
/// eventfds are registered there, and follow the BAR when the guest moves
/// it.
#[test]
fn notify_addresses_follow_the_bar() {
    let Setup { t, .. } = dummy();
    let fds: Vec<i32> = t.queue_events().iter().map(|e| e.as_raw_fd()).collect();
    let ioevents = Arc::new(RecordingIoEvents::default());
    let windows = PciWindows {
        mmio32: MmioWindow { base: 0xc000_0000, len: 0x1000_0000 },
        mmio64: MmioWindow { base: 0x80_0000_0000, len: 0x1_0000_0000 },
    };
    let mut root = PciRoot::new(windows, ioevents.clone()).unwrap();
    let t = Arc::new(Mutex::new(t));
    let slot = root.add_device(t.clone()).unwrap();
    assert_eq!(slot, 1);
    let base = 0x80_0000_0000u64;
    assert_eq!(ioevents.registered(), vec![(fds[0], base + 0x3000), (fds[1], base + 0x3004)]);
    assert_eq!(root.decoded_bars(), vec![(1, 0, base, VIRTIO_BAR_SIZE)]);
    // The guest moves BAR 0 below 4 GiB.
    root.config_write(0, 1, 0, BAR0, &0xc001_0000u32.to_le_bytes());
    root.config_write(0, 1, 0, BAR0 + 4, &0u32.to_le_bytes());
    assert_eq!(ioevents.registered(), vec![(fds[0], 0xc001_3000), (fds[1], 0xc001_3004)]);
    // A BAR window write at the notify address reaches the eventfd.
    let windows = root.bar_windows();
    windows[0].2.lock().unwrap().write(0x1_3004, &1u16.to_le_bytes());
    assert_eq!(t.lock().unwrap().queue_events()[1].read().unwrap(), 1);
    // Decoding off: no registrations.
    root.config_write(0, 1, 0, COMMAND, &0u16.to_le_bytes());
    assert!(ioevents.registered().is_empty());
}

// ---- snapshot ----

const SNAP_WINDOWS: PciWindows = PciWindows {
    mmio32: MmioWindow { base: 0xc000_0000, len: 0x1000_0000 },
    mmio64: MmioWindow { base: 0x80_0000_0000, len: 0x1_0000_0000 },
};

/// A transport on bus 0 (device 1), with its interrupt test doubles and
/// the bus's ioeventfd registry.
struct OnBus {
    root: PciRoot,
    t: Arc<Mutex<VirtioPciTransport>>,
    irqs: Irqs,
    ioevents: Arc<RecordingIoEvents>,
}

fn on_bus(dev: Box<dyn VirtioDevice>, mem: &GuestMemoryMmap) -> OnBus {
    let (irqs, wiring) = Irqs::new(VirtioPciTransport::vector_count(dev.as_ref()));
    let t = Arc::new(Mutex::new(VirtioPciTransport::new(dev, mem.clone(), wiring).unwrap()));
    let ioevents = Arc::new(RecordingIoEvents::default());
    let mut root = PciRoot::new(SNAP_WINDOWS, ioevents.clone()).unwrap();
    assert_eq!(root.add_device(t.clone()).unwrap(), 1);
    OnBus { root, t, irqs, ioevents }
}

fn blk_device(path: &std::path::Path) -> Box<dyn VirtioDevice> {
    Box::new(Block::new(&BlockConfig { path: path.to_path_buf(), readonly: false, id: None }).unwrap())
}

/// Brings queue 0 of a blk device up on `drv`'s rings with vector 1,
/// vectors 0 and 1 programmed, MSI-X on, then `DRIVER_OK`.
fn blk_up(t: &mut VirtioPciTransport, drv: &Driver) {
    assert!(negotiate(t, version_1() | 1 << VIRTIO_RING_F_EVENT_IDX));
    driver_queue(t, 0, 16, drv, 1);
    common_w(t, CONFIG_MSIX_VECTOR, 0, 2);
    program_vector(t, 0, 0x40, false);
    program_vector(t, 1, 0x41, false);
    set_msix_control(t, MSIX_CONTROL_ENABLE);
    common_w(t, DEVICE_STATUS, u64::from(DOK), 1);
    assert!(t.is_activated());
}

/// Posts a one-sector read of `sector` and serves it.
fn blk_read_sector(t: &Mutex<VirtioPciTransport>, mem: &GuestMemoryMmap, drv: &mut Driver, sector: u64) {
    let (hdr, buf, status_at) = (DATA_BASE, DATA_BASE + 0x1000, DATA_BASE + 0x100);
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(hdr)).unwrap();
    // The driver asks for an interrupt on this buffer.
    drv.set_used_event(drv.used_idx());
    drv.add(&[r(hdr, 16), w(buf, 512), w(status_at, 1)]);
    let mut t = t.lock().unwrap();
    t.write_bar(0, NOTIFY_OFFSET, &0u16.to_le_bytes());
    t.handle_queue_event(0);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(status_at)).unwrap(), VIRTIO_BLK_S_OK as u8);
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got, GuestAddress(buf)).unwrap();
    assert_eq!(got, (sector * 512..sector * 512 + 512).map(pattern).collect::<Vec<_>>());
}

/// A driver's blk device on bus 0, its BAR moved by the guest, a vector
/// masked with an interrupt pending: saved, restored into a fresh bus and
/// transport, and it goes on: the BAR and its notification eventfd where
/// the guest put them, every vector routed again, the pending one still
/// pending, and the used index continuing without a repeat or a gap.
#[test]
fn snapshot_blk_on_the_bus_continues_after_restore() {
    let dir = TempDir::new("pci-snap");
    let path = dir.image("disk.img", 64 * 1024);
    let mem = guest_mem();
    let mut drv = Driver::new(&mem, 16);
    let mut b = on_bus(blk_device(&path), &mem);
    let bar = 0xc001_0000u64;
    b.root.config_write(0, 1, 0, BAR0, &(bar as u32).to_le_bytes());
    b.root.config_write(0, 1, 0, BAR0 + 4, &0u32.to_le_bytes());
    blk_up(&mut b.t.lock().unwrap(), &drv);
    drv.set_used_event(0);
    for sector in [1, 2] {
        blk_read_sector(&b.t, &mem, &mut drv, sector);
    }
    assert_eq!(b.irqs.counts(), vec![0, 2]);
    // The queue's vector masked: the third completion stays pending.
    program_vector(&mut b.t.lock().unwrap(), 1, 0x41, true);
    blk_read_sector(&b.t, &mem, &mut drv, 3);
    assert_eq!(drv.used_idx(), 3);
    assert!(b.t.lock().unwrap().msix().is_pending(1));

    let bus_state = b.root.save_state();
    let saved = b.t.lock().unwrap().save_state().unwrap();
    assert_eq!(saved.virtio.queues[0].next_used, 3);
    assert_eq!(saved.queue_vectors, vec![1]);
    drop(b);

    let mut b = on_bus(blk_device(&path), &mem);
    let fds: Vec<i32> = b.t.lock().unwrap().queue_events().iter().map(|e| e.as_raw_fd()).collect();
    assert_eq!(b.ioevents.registered(), vec![(fds[0], 0x80_0000_3000)], "placed by the VMM");
    b.root.restore_state(&bus_state).unwrap();
    assert_eq!(b.ioevents.registered(), vec![(fds[0], bar + NOTIFY_OFFSET)], "moved with the BAR");
    assert_eq!(b.root.decoded_bars(), vec![(1, 0, bar, VIRTIO_BAR_SIZE)]);
    b.t.lock().unwrap().restore_state(&saved).unwrap();
    assert_eq!(b.root.save_state(), bus_state);
    assert_eq!(b.t.lock().unwrap().save_state().unwrap(), saved);
    let msg = |data| MsiMessage { addr: 0xfee0_0000, data };
    assert_eq!(b.irqs.routing.last(0), Some((msg(0x40), false)));
    assert_eq!(b.irqs.routing.last(1), Some((msg(0x41), true)));
    assert_eq!(b.irqs.counts(), vec![0, 0], "masked: still pending");
    {
        let mut t = b.t.lock().unwrap();
        assert_eq!(status(&mut t), DOK);
        assert_eq!(common_r(&mut t, QUEUE_MSIX_VECTOR, 2), 1);
        // The guest unmasks the vector: the pending interrupt arrives.
        program_vector(&mut t, 1, 0x41, false);
    }
    assert_eq!(b.irqs.counts(), vec![0, 1]);
    blk_read_sector(&b.t, &mem, &mut drv, 4);
    assert_eq!(drv.used_idx(), 4);
    assert_eq!(drv.used(3).0, 9, "the fourth chain, served once");
    assert_eq!(b.irqs.counts(), vec![0, 2]);
}

/// virtio-net over PCI: frames sent before the snapshot are not sent
/// again, the next one goes out, and the receive side is polled as soon as
/// the event loop takes the restored transport.
#[test]
fn snapshot_net_continues_after_restore() {
    let (a, peer) = seqpacket_pair();
    let net_on = |fd: &OwnedFd| -> Box<dyn VirtioDevice> {
        let backend = SockBackend(fd.try_clone().unwrap());
        Box::new(Net::with_backend("snap0".into(), Box::new(backend), Some([2, 0, 0, 0, 0, 7])).unwrap())
    };
    let mem = guest_mem();
    let mut rx = Driver::new(&mem, 16);
    // The transmit rings live after the receive ones.
    let tx_base = 0x8000;
    let b = on_bus(net_on(&a), &mem);
    {
        let mut t = b.t.lock().unwrap();
        assert!(negotiate(&mut t, version_1()));
        driver_queue(&mut t, 0, 16, &rx, 0);
        setup_queue(&mut t, 1, 16, tx_base, 1);
        for v in 0..3 {
            program_vector(&mut t, v, 0x50 + v as u32, false);
        }
        set_msix_control(&mut t, MSIX_CONTROL_ENABLE);
        common_w(&mut t, DEVICE_STATUS, u64::from(DOK), 1);
        assert!(t.is_activated());
    }
    // `setup_queue`'s layout for the transmit queue, driven by hand.
    let tx_avail = tx_base + 16 * 16;
    let tx_used = (tx_avail + 6 + 2 * 16 + 3) & !3;
    let send = |t: &Mutex<VirtioPciTransport>, n: u16, byte: u8| {
        let frame: Vec<u8> = (0..12 + 60).map(|i| if i < 12 { 0 } else { byte }).collect();
        let at = DATA_BASE + 0x4000 + 0x100 * u64::from(n);
        mem.write_slice(&frame, GuestAddress(at)).unwrap();
        let d = virtio_queue::desc::split::Descriptor::new(at, frame.len() as u32, 0, 0);
        mem.write_obj(virtio_queue::desc::RawDescriptor::from(d), GuestAddress(tx_base + 16 * u64::from(n))).unwrap();
        mem.write_obj(n, GuestAddress(tx_avail + 4 + 2 * u64::from(n))).unwrap();
        mem.write_obj(n + 1, GuestAddress(tx_avail + 2)).unwrap();
        let mut t = t.lock().unwrap();
        t.write_bar(0, VirtioPciTransport::notify_offset(1), &1u16.to_le_bytes());
        t.handle_queue_event(1);
        let mut buf = [0u8; 128];
        // SAFETY: a writable buffer.
        let got = unsafe { libc::read(peer.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(got, 72);
        assert_eq!(buf[12], byte);
        mem.read_obj::<u16>(GuestAddress(tx_used + 2)).unwrap()
    };
    assert_eq!(send(&b.t, 0, 0xa0), 1);
    assert_eq!(send(&b.t, 1, 0xa1), 2);
    rx.add(&[w(DATA_BASE, 2048)]);
    let bus_state = b.root.save_state();
    let saved = b.t.lock().unwrap().save_state().unwrap();
    drop(b);
    // SAFETY: a writable buffer; the socket is non-blocking.
    let n = unsafe { libc::read(peer.as_raw_fd(), [0u8; 128].as_mut_ptr().cast(), 128) };
    assert_eq!(n, -1, "nothing else was sent");

    let mut b = on_bus(net_on(&a), &mem);
    b.root.restore_state(&bus_state).unwrap();
    b.t.lock().unwrap().restore_state(&saved).unwrap();
    assert_eq!(b.t.lock().unwrap().save_state().unwrap(), saved);
    let mut em = EventManager::<Arc<Mutex<VirtioPciTransport>>>::new().unwrap();
    em.add_subscriber(b.t.clone());
    // The restore's own signal of each queue: nothing is sent again.
    em.run_with_timeout(1000).unwrap();
    assert_eq!(mem.read_obj::<u16>(GuestAddress(tx_used + 2)).unwrap(), 2);
    assert_eq!(send(&b.t, 2, 0xa2), 3);
    // The backend is polled: a frame from the peer reaches the buffer
    // posted before the snapshot.
    peer_sends_frame(&peer);
    em.run_with_timeout(1000).unwrap();
    assert_eq!(rx.used_idx(), 1);
    assert_eq!(rx.used(0).1, 72);
}

/// The saved state of a fresh MSI-X table of `n` vectors.
fn msix_of(n: usize) -> crate::pci::msix::MsixState {
    let lines = (0..n).map(|_| Arc::new(CountingIrq::default()) as Arc<dyn IrqLine>).collect();
    crate::pci::msix::Msix::new(lines, Arc::new(RecordingRouting::default())).unwrap().save_state()
}

/// Corrupt transport states are refused with the bad value named and the
/// transport left as built (after the bus restored its configuration).
#[test]
fn snapshot_corrupt_pci_states_are_refused() {
    let dir = TempDir::new("pci-snap-bad");
    let path = dir.image("disk.img", 64 * 1024);
    let mem = guest_mem();
    let mut drv = Driver::new(&mem, 16);
    let b = on_bus(blk_device(&path), &mem);
    blk_up(&mut b.t.lock().unwrap(), &drv);
    drv.set_used_event(0);
    blk_read_sector(&b.t, &mem, &mut drv, 1);
    let bus_state = b.root.save_state();
    let saved = b.t.lock().unwrap().save_state().unwrap();
    drop(b);
    type Corrupt = fn(&mut PciTransportState);
    let cases: &[(Corrupt, &str)] = &[
        (|s| s.virtio.queues[0].size = 3, "size 3"),
        (|s| s.virtio.queues[0].size = 1024, "size 1024"),
        (|s| s.virtio.driver_features |= 1 << 50, "include 0x4000000000000"),
        (|s| s.virtio.device_type = 1, "saved virtio device type 1"),
        (|s| s.msix = msix_of(5), "5 vectors"),
        (|s| s.queue_vectors = vec![7], "vector 0x7"),
        (|s| s.queue_vectors = vec![1, 1], "saved 2 queues"),
        (|s| s.config_vector = 2, "msix_config 0x2"),
        (|s| s.isr = 4, "ISR status 0x4"),
    ];
    for (corrupt, what) in cases {
        let mut bad = saved.clone();
        corrupt(&mut bad);
        let mut b = on_bus(blk_device(&path), &mem);
        b.root.restore_state(&bus_state).unwrap();
        let fresh = b.t.lock().unwrap().save_state().unwrap();
        b.irqs.routing.clear();
        let e = b.t.lock().unwrap().restore_state(&bad).unwrap_err().to_string();
        assert!(e.contains(what), "{what:?} not in {e:?}");
        assert_eq!(b.t.lock().unwrap().save_state().unwrap(), fresh, "left as built after {e}");
        assert!(b.irqs.routing.updates().is_empty());
    }
    // Restoring the transport before the bus: the MSI-X control word is
    // not there yet.
    let b = on_bus(blk_device(&path), &mem);
    let e = b.t.lock().unwrap().restore_state(&saved).unwrap_err().to_string();
    assert!(e.contains("restore the PCI root first"), "{e}");
}
