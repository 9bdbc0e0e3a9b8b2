//! The VM's KVM GSI routing: where each global system interrupt (GSI) goes.
//!
//! `KVM_CREATE_IRQCHIP` installs a default table: GSI *n* is IOAPIC pin
//! *n* (0–23) and, below 16, also input *n* of the PICs. Legacy devices
//! and virtio-mmio raise those GSIs through irqfds. A PCI function's MSI-X
//! vectors need a route of their own each: an MSI route carrying the
//! message the guest wrote into the function's table. [`GsiRouting`] hands
//! out GSIs for them from [`MSI_GSI_BASE`] up and, whenever a route
//! changes, replaces KVM's table (`KVM_SET_GSI_ROUTING` takes the whole
//! table) with the default pin routes plus every MSI route.
//!
//! [`MsiVectors`] is one function's block of GSIs: the device crate's
//! [`MsiRouting`] for that function. Its vectors' irqfds are registered on
//! those GSIs once, when the VM is built; the guest's table writes only
//! change routes, from the vCPU thread that made them. A masked vector
//! keeps its old route: the device never raises a masked vector (it sets
//! its pending bit), so the route is only needed, and only updated, when
//! the vector is unmasked. Linux programs vectors while they are masked,
//! so a driver's set-up costs one `KVM_SET_GSI_ROUTING` per vector.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use ember_devices::pci::msix::{MsiMessage, MsiRouting};
use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;

use crate::layout::{GSI_END, IOAPIC_PINS, MSI_GSI_BASE};
use crate::sync::lock;

/// Where routes go: KVM, or (in unit tests) a record of the tables.
pub(crate) trait RoutingTable: Send + Sync {
    /// Replaces the VM's whole routing table with `entries`.
    fn set(&self, entries: &[kvm_irq_routing_entry]) -> io::Result<()>;
}

impl RoutingTable for VmFd {
    fn set(&self, entries: &[kvm_irq_routing_entry]) -> io::Result<()> {
        let table = KvmIrqRouting::from_entries(entries)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{} routes: {e:?}", entries.len())))?;
        self.set_gsi_routing(&table).map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

/// The VM's GSI routing table and the allocator of MSI GSIs.
pub(crate) struct GsiRouting {
    table: Arc<dyn RoutingTable>,
    state: Mutex<State>,
}

struct State {
    /// The next free GSI for MSI routes.
    next: u32,
    /// The MSI routes installed in KVM now, by GSI.
    msi: BTreeMap<u32, MsiMessage>,
}

impl GsiRouting {
    /// The default routing of a VM with an in-kernel irqchip; routes go to
    /// `table` (the VM fd).
    pub(crate) fn new(table: Arc<dyn RoutingTable>) -> Self {
        GsiRouting { table, state: Mutex::new(State { next: MSI_GSI_BASE, msi: BTreeMap::new() }) }
    }

    /// Reserves `count` consecutive GSIs for MSI routes; returns the first.
    pub(crate) fn allocate(&self, count: u16) -> Result<u32, RoutingError> {
        let mut st = lock(&self.state);
        let first = st.next;
        let end = first + u32::from(count);
        if end > GSI_END {
            return Err(RoutingError::OutOfGsis { wanted: count, left: GSI_END - first });
        }
        st.next = end;
        Ok(first)
    }

    /// Routes `gsi` (one from [`allocate`](Self::allocate)) to `msg`,
    /// installing the new table in KVM unless the route is already there.
    /// On failure KVM and this table keep the old route.
    fn route_msi(&self, gsi: u32, msg: MsiMessage) -> io::Result<()> {
        let mut st = lock(&self.state);
        if st.msi.get(&gsi) == Some(&msg) {
            return Ok(());
        }
        let old = st.msi.insert(gsi, msg);
        let r = self.table.set(&table_entries(&st.msi));
        if r.is_err() {
            match old {
                Some(m) => st.msi.insert(gsi, m),
                None => st.msi.remove(&gsi),
            };
        }
        r
    }
}

/// The whole routing table: KVM's default pin routes, then `msi`.
fn table_entries(msi: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
    let chip = |gsi: u32, irqchip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry { gsi, type_: KVM_IRQ_ROUTING_IRQCHIP, ..Default::default() };
        e.u.irqchip.irqchip = irqchip;
        e.u.irqchip.pin = pin;
        e
    };
    let mut v = Vec::with_capacity(IOAPIC_PINS as usize + 16 + msi.len());
    for gsi in 0..IOAPIC_PINS {
        v.push(chip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < 16 {
            let pic = if gsi < 8 { KVM_IRQCHIP_PIC_MASTER } else { KVM_IRQCHIP_PIC_SLAVE };
            v.push(chip(gsi, pic, gsi % 8));
        }
    }
    for (&gsi, m) in msi {
        let mut e = kvm_irq_routing_entry { gsi, type_: KVM_IRQ_ROUTING_MSI, ..Default::default() };
        e.u.msi.address_lo = m.addr as u32;
        e.u.msi.address_hi = (m.addr >> 32) as u32;
        e.u.msi.data = m.data;
        v.push(e);
    }
    v
}

/// Errors reserving routes (VMM input: too many vectors).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoutingError {
    /// The devices' MSI-X vectors need more GSIs than KVM routes.
    #[error("{wanted} MSI-X vectors need a GSI each; only {left} are left")]
    OutOfGsis {
        /// Vectors asked for.
        wanted: u16,
        /// GSIs left.
        left: u32,
    },
}

/// One PCI function's MSI-X vectors: vector *v* is GSI `first + v`.
pub(crate) struct MsiVectors {
    routing: Arc<GsiRouting>,
    first: u32,
    count: u16,
}

impl MsiVectors {
    /// Reserves a GSI for each of `count` vectors.
    pub(crate) fn new(routing: Arc<GsiRouting>, count: u16) -> Result<Self, RoutingError> {
        let first = routing.allocate(count)?;
        Ok(MsiVectors { routing, first, count })
    }

    /// The GSI of each vector, in vector order (for the irqfds).
    pub(crate) fn gsis(&self) -> impl Iterator<Item = u32> {
        self.first..self.first + u32::from(self.count)
    }
}

impl MsiRouting for MsiVectors {
    fn update(&self, vector: u16, msg: MsiMessage, masked: bool) -> io::Result<()> {
        if vector >= self.count {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("MSI-X vector {vector} of a function with {}", self.count),
            ));
        }
        if masked {
            // Never raised while masked; the route is updated on unmask.
            return Ok(());
        }
        self.routing.route_msi(self.first + u32::from(vector), msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every table KVM would get; fails on demand.
    #[derive(Default)]
    struct Recorder {
        tables: Mutex<Vec<Vec<kvm_irq_routing_entry>>>,
        fail: std::sync::atomic::AtomicBool,
    }

    impl RoutingTable for Recorder {
        fn set(&self, entries: &[kvm_irq_routing_entry]) -> io::Result<()> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(libc::ENOMEM));
            }
            self.tables.lock().unwrap().push(entries.to_vec());
            Ok(())
        }
    }

    fn msi_routes(t: &[kvm_irq_routing_entry]) -> Vec<(u32, u64, u32)> {
        t.iter()
            .filter(|e| e.type_ == KVM_IRQ_ROUTING_MSI)
            // SAFETY: the entry is an MSI route, so `msi` is the union's
            // active member.
            .map(|e| unsafe {
                (e.gsi, u64::from(e.u.msi.address_hi) << 32 | u64::from(e.u.msi.address_lo), e.u.msi.data)
            })
            .collect()
    }

    #[test]
    fn the_table_keeps_the_default_pin_routes() {
        let t = table_entries(&BTreeMap::new());
        assert_eq!(t.len(), 24 + 16);
        // SAFETY: every entry is an irqchip route.
        let pins: Vec<(u32, u32, u32)> =
            t.iter().map(|e| unsafe { (e.gsi, e.u.irqchip.irqchip, e.u.irqchip.pin) }).collect();
        assert!(pins.contains(&(0, KVM_IRQCHIP_IOAPIC, 0)));
        assert!(pins.contains(&(0, KVM_IRQCHIP_PIC_MASTER, 0)));
        assert!(pins.contains(&(4, KVM_IRQCHIP_IOAPIC, 4)));
        assert!(pins.contains(&(12, KVM_IRQCHIP_PIC_SLAVE, 4)));
        assert!(pins.contains(&(23, KVM_IRQCHIP_IOAPIC, 23)));
        assert!(!pins.iter().any(|&(g, c, _)| g >= 16 && c != KVM_IRQCHIP_IOAPIC));
    }

    #[test]
    fn vectors_get_consecutive_gsis_and_routes_on_unmask() {
        let rec = Arc::new(Recorder::default());
        let routing = Arc::new(GsiRouting::new(rec.clone()));
        let a = MsiVectors::new(routing.clone(), 2).unwrap();
        let b = MsiVectors::new(routing.clone(), 3).unwrap();
        assert_eq!(a.gsis().collect::<Vec<_>>(), [24, 25]);
        assert_eq!(b.gsis().collect::<Vec<_>>(), [26, 27, 28]);
        let m = MsiMessage { addr: 0xfee0_1000, data: 0x4041 };
        // Programmed while masked: nothing reaches KVM.
        a.update(1, m, true).unwrap();
        assert!(rec.tables.lock().unwrap().is_empty());
        // Unmasked: one table with the route; the same route again: none.
        a.update(1, m, false).unwrap();
        a.update(1, m, false).unwrap();
        b.update(0, MsiMessage { addr: 0xfee0_0000, data: 0x22 }, false).unwrap();
        let tables = rec.tables.lock().unwrap();
        assert_eq!(tables.len(), 2);
        assert_eq!(msi_routes(&tables[1]), [(25, 0xfee0_1000, 0x4041), (26, 0xfee0_0000, 0x22)]);
        assert_eq!(tables[1].len(), 40 + 2);
        drop(tables);
        assert!(a.update(2, m, false).is_err(), "a vector the function does not have");
    }

    #[test]
    fn a_refused_table_keeps_the_old_route() {
        let rec = Arc::new(Recorder::default());
        let routing = Arc::new(GsiRouting::new(rec.clone()));
        let v = MsiVectors::new(routing, 1).unwrap();
        v.update(0, MsiMessage { addr: 0xfee0_0000, data: 1 }, false).unwrap();
        rec.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(v.update(0, MsiMessage { addr: 0xfee0_0000, data: 2 }, false).is_err());
        rec.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        // Back to the old message: KVM has it, so no new table.
        v.update(0, MsiMessage { addr: 0xfee0_0000, data: 1 }, false).unwrap();
        assert_eq!(rec.tables.lock().unwrap().len(), 1);
    }

    #[test]
    fn gsis_run_out_at_kvms_limit() {
        let routing = GsiRouting::new(Arc::new(Recorder::default()));
        assert_eq!(routing.allocate(4000), Ok(24));
        assert_eq!(routing.allocate(100), Err(RoutingError::OutOfGsis { wanted: 100, left: 72 }));
        assert_eq!(routing.allocate(72), Ok(4024));
    }
}
