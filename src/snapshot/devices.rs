//! The devices' part of a state file: each device's saved state, in the
//! order the VM builds them.

use serde::{Deserialize, Serialize};

use super::state::Machine;
use super::SnapshotError;

/// Every device's saved state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceStates {}

impl DeviceStates {
    /// Refuses device states that do not fit `machine`.
    pub(crate) fn check(&self, _machine: &Machine) -> Result<(), SnapshotError> {
        Ok(())
    }
}
