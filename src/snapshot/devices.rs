//! The devices' part of a state file: each device's saved state (the
//! device crate's state types), in the order the VM builds them.

use ember_devices::legacy::{CmosState, I8042Snapshot, SerialState};
use ember_devices::pci::bus::{PciConfigIoState, PciRootState};
use ember_devices::virtio::mmio::MmioTransportState;
use ember_devices::virtio::pci::PciTransportState;
use serde::{Deserialize, Serialize};

use super::state::Machine;
use super::SnapshotError;

/// A virtio device's transport and device state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum SavedVirtio {
    /// On virtio-mmio.
    Mmio(MmioTransportState),
    /// On virtio-pci.
    Pci(PciTransportState),
}

impl SavedVirtio {
    /// The transport's name, as [`crate::VirtioTransport::name`] gives it.
    pub fn transport(&self) -> &'static str {
        match self {
            SavedVirtio::Mmio(_) => "mmio",
            SavedVirtio::Pci(_) => "pci",
        }
    }
}

/// Every device's saved state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceStates {
    /// COM1.
    pub com1: SerialState,
    /// The UARTs after COM1.
    pub extra_uarts: Vec<SerialState>,
    /// The i8042 and its keyboard.
    pub i8042: I8042Snapshot,
    /// The CMOS (its index register and NVRAM).
    pub cmos: CmosState,
    /// PCI bus 0: each function's configuration space.
    pub pci_root: PciRootState,
    /// The legacy configuration ports' latched address.
    pub pci_config_io: PciConfigIoState,
    /// The virtio devices in guest order: disks, then NICs.
    pub virtio: Vec<SavedVirtio>,
}

impl DeviceStates {
    /// Refuses device states that do not fit `machine`: one UART state per
    /// extra UART, one virtio state per disk and NIC, each on its
    /// device's transport.
    pub(crate) fn check(&self, machine: &Machine) -> Result<(), SnapshotError> {
        let bad = |what: String| Err(SnapshotError::Inconsistent(what));
        if self.extra_uarts.len() != usize::from(machine.extra_serials) {
            return bad(format!(
                "{} extra UART states for {} extra UARTs",
                self.extra_uarts.len(),
                machine.extra_serials
            ));
        }
        let wanted: Vec<&str> = machine
            .disks
            .iter()
            .map(|d| d.transport.as_str())
            .chain(machine.nets.iter().map(|n| n.transport.as_str()))
            .collect();
        if self.virtio.len() != wanted.len() {
            return bad(format!("{} virtio device states for {} disks and NICs", self.virtio.len(), wanted.len()));
        }
        for (i, (v, want)) in self.virtio.iter().zip(wanted).enumerate() {
            if v.transport() != want {
                return bad(format!("virtio device {i} saved on {} but configured on {want}", v.transport()));
            }
        }
        Ok(())
    }
}
