//! Saving and restoring a virtio-pci transport: the virtio state its core
//! keeps, the MSI-X table and pending bits, the vector of each queue and of
//! configuration changes, and the ISR status.
//!
//! The function's configuration space (command register, BAR address,
//! MSI-X enable and function mask in the capability) belongs to the bus
//! state ([`crate::pci::bus::PciRoot::save_state`]) and is restored first.

use serde::{Deserialize, Serialize};

use super::{VirtioPciTransport, ISR_CONFIG, ISR_QUEUE, NO_VECTOR};
use crate::pci::msix::{MsixState, MSIX_CONTROL_ENABLE, MSIX_CONTROL_MASK, MSIX_CONTROL_OFFSET};
use crate::snapshot::{RestoreError, SaveError};
use crate::virtio::VirtioState;

/// The saved state of a virtio-pci transport and its device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciTransportState {
    pub(super) virtio: VirtioState,
    pub(super) msix: MsixState,
    pub(super) queue_vectors: Vec<u16>,
    pub(super) config_vector: u16,
    pub(super) isr: u8,
}

const DEVICE: &str = "virtio-pci";

impl VirtioPciTransport {
    /// The transport's and its device's state: the common configuration
    /// (negotiation, status, selectors, queues, the device's live ones while
    /// it runs), the MSI-X table and pending bits, `msix_config` and each
    /// queue's vector, and the ISR status. Fails for a device a snapshot
    /// cannot carry (virtio-9p).
    pub fn save_state(&self) -> Result<PciTransportState, SaveError> {
        Ok(PciTransportState {
            virtio: self.core.save_state()?,
            msix: self.msix.save_state(),
            queue_vectors: self.queue_vectors.clone(),
            config_vector: self.config_vector,
            isr: self.isr,
        })
    }

    fn check_vector(&self, field: &'static str, v: u16) -> Result<(), RestoreError> {
        if v != NO_VECTOR && v >= self.msix.vectors() {
            return Err(RestoreError::Value {
                device: DEVICE,
                field,
                value: v.into(),
                why: "no such MSI-X vector (and not NO_VECTOR)",
            });
        }
        Ok(())
    }

    /// Puts `state` back into this freshly built transport (same device
    /// type and backend, never touched by a guest), after the bus restored
    /// the function's configuration space and before the event loop and
    /// the vCPUs run. A device the driver had started is activated as at
    /// `DRIVER_OK`, with its queues exactly as saved. Every MSI-X vector's
    /// message is routed again through the `PciInterrupts::msi` routing
    /// (as a guest's table write does), unmasked pending vectors are
    /// delivered, and INTx is raised again if the ISR holds a bit while
    /// MSI-X is off. On an error the transport is left as built.
    pub fn restore_state(&mut self, state: &PciTransportState) -> Result<(), RestoreError> {
        let nqueues = self.core.num_queues();
        if state.queue_vectors.len() != nqueues {
            return Err(RestoreError::QueueCount { device: DEVICE, saved: state.queue_vectors.len(), actual: nqueues });
        }
        for &v in &state.queue_vectors {
            self.check_vector("queue MSI-X vector", v)?;
        }
        self.check_vector("msix_config", state.config_vector)?;
        if state.isr & !(ISR_QUEUE | ISR_CONFIG) != 0 {
            return Err(RestoreError::Value {
                device: DEVICE,
                field: "ISR status",
                value: state.isr.into(),
                why: "unknown bits",
            });
        }
        self.msix.check_state(&state.msix)?;
        let control = self.config.read_u16(self.msix_cap + MSIX_CONTROL_OFFSET);
        let enabled = control & MSIX_CONTROL_ENABLE != 0;
        let masked = control & MSIX_CONTROL_MASK != 0;
        if (enabled, masked) != (state.msix.enabled(), state.msix.function_masked()) {
            return Err(RestoreError::Value {
                device: DEVICE,
                field: "MSI-X enable/function mask",
                value: u64::from(state.msix.enabled()) | u64::from(state.msix.function_masked()) << 1,
                why: "differs from the MSI-X control word of the configuration space (restore the PCI root first)",
            });
        }
        self.core.restore_state(&state.virtio)?;
        if let Err(e) = self.msix.restore_state(&state.msix) {
            // Checked above; cannot happen.
            log::error!("virtio-pci: MSI-X state not restored: {e}");
        }
        self.queue_vectors.copy_from_slice(&state.queue_vectors);
        self.config_vector = state.config_vector;
        self.isr = state.isr;
        if self.isr != 0 && !self.msix.enabled() {
            self.raise_intx();
        }
        Ok(())
    }
}
