use std::os::unix::io::AsRawFd;

use super::*;
use crate::pci::config::{bar_reg, BAR0, COMMAND_MEMORY};
use crate::pci::{BarSpec, IoEvent};

const W32: MmioWindow = MmioWindow { base: 0xc000_0000, len: 0x1000_0000 };
const W64: MmioWindow = MmioWindow { base: 0x40_0000_0000, len: 0x10_0000_0000 };

/// A function with a 64-bit 16 KiB BAR 0 (notification eventfd at 0x100),
/// a 32-bit 4 KiB BAR 2, recording BAR accesses.
struct TestDev {
    config: ConfigSpace,
    evt: EventFd,
    accesses: Vec<(u8, u64, usize, bool)>,
}

impl TestDev {
    fn new(id: u16) -> Self {
        let mut config = ConfigSpace::new(&PciHeader {
            vendor_id: 0x1af4,
            device_id: id,
            revision_id: 1,
            class_code: 0xff_00_00,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x40,
            interrupt_pin: 1,
        });
        config.add_bar(0, BarSpec { kind: BarKind::Memory64, size: 0x4000, prefetchable: false }).unwrap();
        config.add_bar(2, BarSpec { kind: BarKind::Memory32, size: 0x1000, prefetchable: false }).unwrap();
        TestDev { config, evt: EventFd::new(libc::EFD_NONBLOCK).unwrap(), accesses: Vec::new() }
    }
}

impl PciDevice for TestDev {
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }
    fn write_config(&mut self, offset: u16, data: &[u8]) {
        self.config.write(offset, data);
    }
    fn bars(&self) -> [Option<BarRegion>; BAR_COUNT] {
        self.config.bars()
    }
    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        self.accesses.push((bar, offset, data.len(), false));
        data.fill(bar + 1);
    }
    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        self.accesses.push((bar, offset, data.len(), true));
    }
    fn ioevents(&self) -> Vec<IoEvent<'_>> {
        vec![IoEvent { bar: 0, offset: 0x100, fd: &self.evt }]
    }
    fn config_space(&self) -> Option<&ConfigSpace> {
        Some(&self.config)
    }
    fn config_space_mut(&mut self) -> Option<&mut ConfigSpace> {
        Some(&mut self.config)
    }
}

struct Setup {
    root: Arc<Mutex<PciRoot>>,
    io: PciConfigIo,
    ecam: PciConfigMmio,
    ioevents: Arc<RecordingIoEvents>,
    devs: Vec<Arc<Mutex<TestDev>>>,
}

fn setup(n: usize) -> Setup {
    let ioevents = Arc::new(RecordingIoEvents::default());
    let mut root = PciRoot::new(PciWindows { mmio32: W32, mmio64: W64 }, ioevents.clone()).unwrap();
    let mut devs = Vec::new();
    for i in 0..n {
        let d = Arc::new(Mutex::new(TestDev::new(0x1040 + i as u16)));
        assert_eq!(root.add_device(d.clone()).unwrap(), i as u8 + 1);
        devs.push(d);
    }
    let root = Arc::new(Mutex::new(root));
    Setup { io: PciConfigIo::new(root.clone()), ecam: PciConfigMmio::new(root.clone()), root, ioevents, devs }
}

fn addr(dev: u8, reg: u16) -> u32 {
    0x8000_0000 | u32::from(dev) << 11 | u32::from(reg & 0xfc) | u32::from(reg & 0xf00) << 16
}

/// A configuration read through 0xCF8/0xCFC.
fn cf8_read(io: &mut PciConfigIo, dev: u8, reg: u16, len: usize) -> u32 {
    io.write(0, &addr(dev, reg).to_le_bytes());
    let mut b = [0u8; 4];
    io.read(4 + u64::from(reg & 3), &mut b[..len]);
    u32::from_le_bytes(b)
}

fn cf8_write(io: &mut PciConfigIo, dev: u8, reg: u16, val: u32, len: usize) {
    io.write(0, &addr(dev, reg).to_le_bytes());
    io.write(4 + u64::from(reg & 3), &val.to_le_bytes()[..len]);
}

fn ecam_read(e: &mut PciConfigMmio, dev: u8, reg: u16, len: usize) -> u32 {
    let mut b = [0u8; 4];
    e.read(u64::from(dev) << 15 | u64::from(reg), &mut b[..len]);
    u32::from_le_bytes(b)
}

fn ecam_write(e: &mut PciConfigMmio, dev: u8, reg: u16, val: u32) {
    e.write(u64::from(dev) << 15 | u64::from(reg), &val.to_le_bytes());
}

fn fd(d: &Arc<Mutex<TestDev>>) -> i32 {
    d.lock().unwrap().evt.as_raw_fd()
}

/// The BAR-map invariants: decoded BARs lie in a window and never overlap;
/// exactly the notification addresses of decoded BAR 0s are registered.
fn check_map(s: &Setup) {
    let root = s.root.lock().unwrap();
    let bars = root.decoded_bars();
    for w in bars.windows(2) {
        assert!(w[0].2 + w[0].3 <= w[1].2, "overlapping BARs: {bars:x?}");
    }
    let mut want = Vec::new();
    for &(slot, bar, a, size) in &bars {
        assert!(W32.contains(a, size) || W64.contains(a, size), "BAR outside the windows: {a:#x}");
        if bar == 0 {
            want.push((fd(&s.devs[usize::from(slot) - 1]), a + 0x100));
        }
    }
    want.sort_by_key(|&(f, a)| (a, f));
    assert_eq!(s.ioevents.registered(), want);
}

#[test]
fn host_bridge_and_linux_type1_probe() {
    let Setup { mut io, .. } = setup(0);
    // Linux's pci_check_type1(): a byte to 0xCFB must not disturb
    // CONFIG_ADDRESS, which reads back what was written.
    io.write(3, &[1]);
    let mut b = [0u8; 4];
    io.read(0, &mut b);
    io.write(0, &0x8000_0000u32.to_le_bytes());
    io.read(0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x8000_0000);
    assert_eq!(cf8_read(&mut io, 0, 0, 4), 0x0008_1b36);
    assert_eq!(cf8_read(&mut io, 0, 0x0a, 2), 0x0600, "class: host bridge");
    assert_eq!(cf8_read(&mut io, 0, 0x0e, 1), 0, "header type 0, single function");
    // Nothing at 00:02.0, functions 1-7, other buses.
    assert_eq!(cf8_read(&mut io, 2, 0, 4), 0xffff_ffff);
    io.write(0, &(0x8000_0000u32 | 1 << 8).to_le_bytes());
    io.read(4, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0xffff_ffff);
    io.write(0, &(0x8000_0000u32 | 1 << 16).to_le_bytes());
    io.read(4, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0xffff_ffff);
    // Disabled address: all-ones.
    io.write(0, &0u32.to_le_bytes());
    io.read(4, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0xffff_ffff);
    // Reserved address bits read as zero.
    io.write(0, &0xffff_ffffu32.to_le_bytes());
    io.read(0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x8fff_fffc);
}

#[test]
fn devices_get_bars_in_the_windows() {
    let s = setup(2);
    let bars = s.root.lock().unwrap().decoded_bars();
    assert_eq!(
        bars,
        vec![
            (1, 2, W32.base, 0x1000),
            (2, 2, W32.base + 0x1000, 0x1000),
            (1, 0, W64.base, 0x4000),
            (2, 0, W64.base + 0x4000, 0x4000),
        ]
    );
    assert_eq!(s.root.lock().unwrap().decoded_bar(2, 0), Some((W64.base + 0x4000, 0x4000)));
    assert_eq!(s.root.lock().unwrap().decoded_bar(2, 1), None);
    let d = s.devs[0].lock().unwrap();
    assert_ne!(d.config.command() & COMMAND_MEMORY, 0);
    assert_eq!(d.config.read_u32(BAR0 + 4), (W64.base >> 32) as u32);
    drop(d);
    check_map(&s);
}

#[test]
fn bar_windows_route_to_the_decoded_bar() {
    let s = setup(2);
    let windows = s.root.lock().unwrap().bar_windows();
    assert_eq!(windows.len(), 2);
    let (b32, l32, w32) = &windows[0];
    let (b64, _, w64) = &windows[1];
    assert_eq!((*b32, *l32), (W32.base, W32.len));
    let mut b = [0u8; 4];
    w64.lock().unwrap().read(0x4008, &mut b);
    assert_eq!(b, [1; 4], "device 2's BAR 0");
    w32.lock().unwrap().write(0x10, &[1, 2]);
    assert_eq!(s.devs[0].lock().unwrap().accesses, vec![(2, 0x10, 2, true)]);
    assert_eq!(s.devs[1].lock().unwrap().accesses, vec![(0, 8, 4, false)]);
    // Nothing decoded there; and an access running past a BAR's end.
    w64.lock().unwrap().read(0x10_0000, &mut b);
    assert_eq!(b, [0xff; 4]);
    w64.lock().unwrap().read(0x3ffe, &mut b);
    assert_eq!(b, [0xff; 4]);
    w64.lock().unwrap().write(u64::MAX - 1, &[0; 4]);
    assert_eq!(*b64, W64.base);
}

#[test]
fn guest_moves_a_bar_and_the_notification_follows() {
    let mut s = setup(1);
    let old = W64.base;
    let new = W64.base + 0x10_0000;
    // Linux's order: decoding off, low then high, decoding on.
    cf8_write(&mut s.io, 1, 0x04, 0, 2);
    assert!(s.root.lock().unwrap().decoded_bars().is_empty());
    assert!(s.ioevents.registered().is_empty());
    cf8_write(&mut s.io, 1, 0x10, new as u32, 4);
    cf8_write(&mut s.io, 1, 0x14, (new >> 32) as u32, 4);
    cf8_write(&mut s.io, 1, 0x04, u32::from(COMMAND_MEMORY), 2);
    assert_eq!(s.ioevents.registered(), vec![(fd(&s.devs[0]), new + 0x100)]);
    assert!(s.root.lock().unwrap().decoded_bars().iter().any(|b| b.2 == new));
    assert!(!s.root.lock().unwrap().decoded_bars().iter().any(|b| b.2 == old));
    check_map(&s);
    // A 64-bit BAR may sit in the 32-bit window too.
    let low = W32.base + 0x8000;
    cf8_write(&mut s.io, 1, 0x14, 0, 4);
    cf8_write(&mut s.io, 1, 0x10, low as u32, 4);
    assert_eq!(s.ioevents.registered(), vec![(fd(&s.devs[0]), low + 0x100)]);
    check_map(&s);
}

#[test]
fn bars_outside_the_windows_are_not_decoded() {
    let mut s = setup(1);
    // Over RAM, at 0, over the IOAPIC, at the sizing value.
    for a in [0x10_0000u64, 0, 0xfec0_0000, 0xffff_ffff_ffff_c000] {
        cf8_write(&mut s.io, 1, 0x10, a as u32, 4);
        cf8_write(&mut s.io, 1, 0x14, (a >> 32) as u32, 4);
        assert!(!s.root.lock().unwrap().decoded_bars().iter().any(|b| b.0 == 1 && b.1 == 0), "{a:#x}");
        assert!(s.ioevents.registered().is_empty());
        check_map(&s);
    }
    // Back inside: decoded again.
    cf8_write(&mut s.io, 1, 0x10, W64.base as u32, 4);
    cf8_write(&mut s.io, 1, 0x14, (W64.base >> 32) as u32, 4);
    assert_eq!(s.ioevents.registered(), vec![(fd(&s.devs[0]), W64.base + 0x100)]);
    // Sizing reads back the size mask; the registers stay consistent.
    cf8_write(&mut s.io, 1, 0x10, 0xffff_ffff, 4);
    assert_eq!(cf8_read(&mut s.io, 1, 0x10, 4), 0xffff_c004);
    cf8_write(&mut s.io, 1, 0x18, 0xffff_ffff, 4);
    assert_eq!(cf8_read(&mut s.io, 1, 0x18, 4), 0xffff_f000);
    check_map(&s);
}

#[test]
fn a_bar_moved_over_another_waits_for_it_to_leave() {
    let mut s = setup(2);
    let a = W64.base;
    let b = W64.base + 0x4000;
    // Device 2's BAR 0 onto device 1's.
    cf8_write(&mut s.io, 2, 0x10, a as u32, 4);
    let bars = s.root.lock().unwrap().decoded_bars();
    assert!(bars.contains(&(1, 0, a, 0x4000)));
    assert!(!bars.iter().any(|x| x.0 == 2 && x.1 == 0));
    check_map(&s);
    // Device 1 moves away: device 2 takes the place it asked for.
    cf8_write(&mut s.io, 1, 0x10, b as u32, 4);
    let bars = s.root.lock().unwrap().decoded_bars();
    assert!(bars.contains(&(1, 0, b, 0x4000)));
    assert!(bars.contains(&(2, 0, a, 0x4000)));
    check_map(&s);
    // Partial overlap with a 32-bit BAR in the other window.
    cf8_write(&mut s.io, 1, 0x10, W32.base as u32 + 0x800, 4);
    cf8_write(&mut s.io, 1, 0x14, 0, 4);
    assert!(!s.root.lock().unwrap().decoded_bars().iter().any(|x| x.0 == 1 && x.1 == 0));
    check_map(&s);
}

#[test]
fn ecam_reaches_the_same_space() {
    let mut s = setup(1);
    assert_eq!(ecam_read(&mut s.ecam, 0, 0, 4), 0x0008_1b36);
    assert_eq!(ecam_read(&mut s.ecam, 1, 0, 4), 0x1040_1af4);
    assert_eq!(ecam_read(&mut s.ecam, 1, 2, 2), 0x1040);
    assert_eq!(ecam_read(&mut s.ecam, 1, 0x100, 4), 0, "extended space of a conventional function");
    assert_eq!(ecam_read(&mut s.ecam, 9, 0, 4), 0xffff_ffff);
    // Function 1, and a read across the end of a function's space.
    let mut b = [0u8; 4];
    s.ecam.read(1 << 15 | 1 << 12, &mut b);
    assert_eq!(b, [0xff; 4]);
    s.ecam.read(1 << 15 | 0xffe, &mut b);
    assert_eq!(b, [0xff; 4]);
    s.ecam.read(ECAM_BUS0_SIZE, &mut b);
    assert_eq!(b, [0xff; 4]);
    // A BAR moved through ECAM.
    ecam_write(&mut s.ecam, 1, 0x18, W32.base as u32 + 0x10_0000);
    assert!(s.root.lock().unwrap().decoded_bars().contains(&(1, 2, W32.base + 0x10_0000, 0x1000)));
    // Extended register bits through 0xCF8 reach offset 0x100, not 0.
    assert_eq!(cf8_read(&mut s.io, 1, 0x100, 4), 0);
    check_map(&s);
}

#[test]
fn odd_port_accesses() {
    let mut s = setup(1);
    s.io.write(0, &addr(1, 0).to_le_bytes());
    let mut b = [0u8; 4];
    // Narrow CONFIG_ADDRESS accesses are not CONFIG_ADDRESS.
    let mut one = [0u8; 1];
    s.io.read(0, &mut one);
    assert_eq!(one, [0xff]);
    s.io.write(1, &[0x12, 0x34]);
    s.io.read(0, &mut b);
    assert_eq!(u32::from_le_bytes(b), addr(1, 0));
    // CONFIG_DATA: inside 0xCFC-0xCFF only.
    s.io.read(6, &mut b);
    assert_eq!(b, [0xff; 4]);
    let mut two = [0u8; 2];
    s.io.read(6, &mut two);
    assert_eq!(two, [0x40, 0x10]);
    s.io.read(7, &mut one);
    assert_eq!(one, [0x10]);
    let mut eight = [0u8; 8];
    s.io.read(4, &mut eight);
    assert_eq!(eight, [0xff; 8]);
    // A write spilling past 0xCFF is dropped (it would hit the command
    // register's neighbour otherwise).
    s.io.write(0, &addr(1, 0x04).to_le_bytes());
    s.io.write(7, &[0xff, 0xff]);
    assert_ne!(s.devs[0].lock().unwrap().config.command() & COMMAND_MEMORY, 0);
    check_map(&s);
}

#[test]
fn hostile_configuration_traffic_keeps_the_map_consistent() {
    let mut s = setup(3);
    let windows = s.root.lock().unwrap().bar_windows();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..30_000u32 {
        let n = next();
        let dev = (n % 5) as u8;
        let reg = match (n >> 8) % 4 {
            0 => 0x10 + ((n >> 12) % 6) as u16 * 4,
            1 => 0x04,
            2 => ((n >> 12) % 0x1000) as u16,
            _ => ((n >> 12) % 0x40) as u16,
        };
        let val = match (n >> 24) % 4 {
            0 => 0xffff_ffff,
            1 => (W64.base + ((n >> 28) % 16) * 0x4000) as u32,
            2 => ((n >> 28) % 4) as u32 * 0x2000 + 0xc000_0000,
            _ => (n >> 32) as u32,
        };
        let len = [1usize, 2, 4, 4][((n >> 40) % 4) as usize];
        match i % 4 {
            0 => cf8_write(&mut s.io, dev, reg, val, len),
            1 => s.ecam.write(u64::from(dev) << 15 | u64::from(reg), &val.to_le_bytes()[..len]),
            2 => {
                let mut b = [0u8; 8];
                s.ecam.read(n >> 44, &mut b[..len]);
            }
            _ => {
                let (_, wl, w) = &windows[(n % 2) as usize];
                let mut b = [0u8; 8];
                w.lock().unwrap().read((n >> 20) % wl, &mut b[..len]);
                w.lock().unwrap().write((n >> 22) % wl, &b[..len]);
            }
        }
        if i % 500 == 0 {
            check_map(&s);
        }
    }
    check_map(&s);
}

#[test]
fn bus_and_window_limits() {
    let ioevents = Arc::new(RecordingIoEvents::default());
    let small = PciWindows { mmio32: MmioWindow { base: 0xc000_0000, len: 0x1000 }, mmio64: W64 };
    let mut root = PciRoot::new(small, ioevents.clone()).unwrap();
    root.add_device(Arc::new(Mutex::new(TestDev::new(1)))).unwrap();
    let err = root.add_device(Arc::new(Mutex::new(TestDev::new(2)))).unwrap_err();
    assert_eq!(err, PciError::WindowFull { size: 0x1000, base: 0xc000_0000, len: 0x1000 });
    assert!(root.device(2).is_none(), "a failed add leaves no device");

    let mut root = PciRoot::new(PciWindows { mmio32: W32, mmio64: W64 }, ioevents.clone()).unwrap();
    for _ in 1..DEVICES_PER_BUS {
        root.add_device(Arc::new(Mutex::new(TestDev::new(1)))).unwrap();
    }
    assert_eq!(root.add_device(Arc::new(Mutex::new(TestDev::new(1)))).unwrap_err(), PciError::BusFull(31));

    let bad = |mmio32, mmio64| PciRoot::new(PciWindows { mmio32, mmio64 }, ioevents.clone()).is_err();
    assert!(bad(MmioWindow { base: 0xc000_0000, len: 0 }, W64));
    assert!(bad(MmioWindow { base: 0xf000_0000, len: 0x2000_0000 }, W64), "32-bit window past 4 GiB");
    assert!(bad(W32, MmioWindow { base: 0xc800_0000, len: 0x1000 }), "overlapping windows");
    assert!(bad(W32, MmioWindow { base: u64::MAX, len: 2 }));
    let _ = bar_reg(0);
}

/// The guest moved BARs (two trading an address on the way), wrote the
/// command register, cache line size and interrupt line: a fresh bus
/// restored from the saved state decodes the same BARs with the
/// notification eventfds at the same addresses.
#[test]
fn snapshot_round_trip_moves_bars_and_eventfds() {
    let mut s = setup(2);
    let (a, b) = (W64.base, W64.base + 0x4000);
    let bars = s.root.lock().unwrap().decoded_bars();
    assert!(bars.iter().any(|x| x.2 == a) && bars.iter().any(|x| x.2 == b), "{bars:x?}");
    let new = W64.base + 0x10_0000;
    cf8_write(&mut s.io, 1, 0x10, new as u32, 4);
    cf8_write(&mut s.io, 1, 0x14, (new >> 32) as u32, 4);
    cf8_write(&mut s.io, 2, 0x10, a as u32, 4);
    cf8_write(&mut s.io, 2, 0x14, (a >> 32) as u32, 4);
    cf8_write(&mut s.io, 2, 0x0c, 0x10, 1);
    cf8_write(&mut s.io, 1, 0x3c, 0x0b, 1);
    cf8_write(&mut s.io, 2, 0x04, u32::from(COMMAND_MEMORY | 0x4), 2);
    check_map(&s);
    let saved = s.root.lock().unwrap().save_state();
    assert_eq!(saved.functions.iter().map(|f| f.device_number).collect::<Vec<_>>(), vec![0, 1, 2]);
    let want = s.root.lock().unwrap().decoded_bars();
    let latch = s.io.save_state();

    let mut f = setup(2);
    f.root.lock().unwrap().restore_state(&saved).unwrap();
    f.io.restore_state(&latch).unwrap();
    assert_eq!(f.io.save_state(), latch);
    assert_eq!(f.root.lock().unwrap().save_state(), saved);
    assert_eq!(f.root.lock().unwrap().decoded_bars(), want);
    assert_eq!(cf8_read(&mut f.io, 2, 0x0c, 1), 0x10);
    assert_eq!(cf8_read(&mut f.io, 1, 0x3c, 1), 0x0b);
    check_map(&f);
    assert_eq!(f.ioevents.registered(), vec![(fd(&f.devs[1]), a + 0x100), (fd(&f.devs[0]), new + 0x100)]);
}

/// Saved functions or bytes that do not fit the bus are refused with the
/// bad value named; nothing changes.
#[test]
fn snapshot_corrupt_bus_states_are_refused() {
    let mut s = setup(2);
    cf8_write(&mut s.io, 1, 0x3c, 0x0b, 1);
    let saved = s.root.lock().unwrap().save_state();
    type Corrupt = fn(&mut PciRootState);
    let cases: &[(Corrupt, &str)] = &[
        (|st| st.functions[1].config[2] ^= 1, "configuration byte 0x2 is 0x41"),
        (|st| st.functions[2].config[0x10] |= 1, "byte 0x10"),
        (|st| st.functions[1].config.truncate(255), "length 0xff"),
        (|st| drop(st.functions.pop()), "00:02.0 is missing"),
        (|st| st.functions[2].device_number = 5, "00:05.0 is not on this bus"),
        (|st| st.functions.swap(1, 2), "00:02.0 is out of order"),
    ];
    for (corrupt, what) in cases {
        let mut bad = saved.clone();
        corrupt(&mut bad);
        let f = setup(2);
        let before = f.root.lock().unwrap().save_state();
        let registered = f.ioevents.registered();
        let e = f.root.lock().unwrap().restore_state(&bad).unwrap_err().to_string();
        assert!(e.contains(what), "{what:?} not in {e:?}");
        assert_eq!(f.root.lock().unwrap().save_state(), before);
        assert_eq!(f.ioevents.registered(), registered);
    }
    let e = s.io.restore_state(&PciConfigIoState { address: 0x8000_0001 }).unwrap_err().to_string();
    assert!(e.contains("CONFIG_ADDRESS 0x80000001"), "{e}");
}
