//! Saving and restoring bus 0: each function's configuration space (the
//! command register, BAR addresses, capability bits the guest wrote) and
//! the latched `CONFIG_ADDRESS` of the legacy ports.
//!
//! Restoring a function's BAR addresses takes the path of a guest's BAR
//! write: the root re-reads every function's BARs and moves its decoding
//! and its notification eventfds ([`IoEventRegistry`](super::IoEventRegistry)).

use serde::{Deserialize, Serialize};

use super::{lock, PciConfigIo, PciRoot, CONFIG_ADDRESS_MASK};
use crate::pci::BAR_COUNT;
use crate::snapshot::RestoreError;

/// One function's saved configuration space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciFunctionState {
    pub(super) device_number: u8,
    pub(super) config: Vec<u8>,
}

/// The saved state of bus 0: every function's configuration space, in
/// device-number order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciRootState {
    pub(super) functions: Vec<PciFunctionState>,
}

/// The saved legacy configuration ports: the latched `CONFIG_ADDRESS`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciConfigIoState {
    pub(super) address: u32,
}

impl PciRoot {
    /// Every function's configuration space as the guest programmed it.
    pub fn save_state(&self) -> PciRootState {
        let mut functions = Vec::new();
        for (n, slot) in self.slots.iter().enumerate() {
            let Some(s) = slot else { continue };
            if let Some(cs) = lock(&s.device).config_space() {
                functions.push(PciFunctionState { device_number: n as u8, config: cs.save_bytes() });
            }
        }
        PciRootState { functions }
    }

    /// Puts the saved configuration spaces back into this freshly built
    /// bus (the same functions at the same device numbers), then decodes
    /// the restored BARs and moves the notification eventfds as a guest's
    /// BAR writes would. Restore the bus before the virtio-pci transports
    /// on it: a transport checks its MSI-X state against the control word
    /// restored here. Each function's lock is taken in turn: call it with
    /// none of them held. On an error nothing changed.
    pub fn restore_state(&mut self, state: &PciRootState) -> Result<(), RestoreError> {
        let mut expected = Vec::new();
        for (n, slot) in self.slots.iter().enumerate() {
            if let Some(s) = slot {
                if lock(&s.device).config_space().is_some() {
                    expected.push(n as u8);
                }
            }
        }
        for (i, f) in state.functions.iter().enumerate() {
            let device = f.device_number;
            match expected.get(i) {
                Some(&n) if n == device => {}
                _ if expected.contains(&device) => {
                    return Err(RestoreError::PciFunction { device, why: "is out of order or repeated" });
                }
                _ => return Err(RestoreError::PciFunction { device, why: "is not on this bus" }),
            }
        }
        if let Some(&device) = expected.get(state.functions.len()) {
            return Err(RestoreError::PciFunction { device, why: "is missing from the saved state" });
        }
        for f in &state.functions {
            if let Some(s) = self.slots[usize::from(f.device_number)].as_ref() {
                if let Some(cs) = lock(&s.device).config_space() {
                    cs.check_bytes(f.device_number, &f.config)?;
                }
            }
        }
        for f in &state.functions {
            if let Some(s) = self.slots[usize::from(f.device_number)].as_ref() {
                if let Some(cs) = lock(&s.device).config_space_mut() {
                    cs.restore_bytes(&f.config);
                }
            }
        }
        self.refresh_all();
        Ok(())
    }

    /// Re-reads every function's BARs and updates the map once, so BARs
    /// that trade places do not collide on the way.
    fn refresh_all(&mut self) {
        for s in self.slots.iter_mut().flatten() {
            let bars = lock(&s.device).bars();
            let mut wanted = [None; BAR_COUNT];
            for b in bars.iter().flatten() {
                if b.decoding && b.addr != 0 && b.addr.checked_add(b.size).is_some() {
                    wanted[usize::from(b.index)] = Some((b.addr, b.size));
                }
            }
            s.wanted = wanted;
        }
        self.update_map();
    }
}

impl PciConfigIo {
    /// The latched `CONFIG_ADDRESS`.
    pub fn save_state(&self) -> PciConfigIoState {
        PciConfigIoState { address: self.address }
    }

    /// Puts a saved `CONFIG_ADDRESS` back; refuses bits the register does
    /// not hold.
    pub fn restore_state(&mut self, state: &PciConfigIoState) -> Result<(), RestoreError> {
        if state.address & !CONFIG_ADDRESS_MASK != 0 {
            return Err(RestoreError::Value {
                device: "pci",
                field: "CONFIG_ADDRESS",
                value: state.address.into(),
                why: "bits the register does not hold",
            });
        }
        self.address = state.address;
        Ok(())
    }
}
