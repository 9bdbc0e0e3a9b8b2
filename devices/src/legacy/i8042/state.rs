//! Saving and restoring the i8042 and its keyboard.

use serde::{Deserialize, Serialize};

use super::*;
use crate::snapshot::RestoreError;

/// The saved state of the i8042 and its keyboard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct I8042Snapshot {
    pub(super) state: I8042State,
}

fn bad(field: &'static str, value: u64, why: &'static str) -> RestoreError {
    RestoreError::Value { device: "i8042", field, value, why }
}

impl I8042 {
    /// The controller's and the keyboard's state.
    pub fn save_state(&self) -> I8042Snapshot {
        I8042Snapshot { state: self.state.clone() }
    }

    /// Puts a saved state back and raises the interrupt again if a byte
    /// waits in the output buffer with its interrupt enabled. Refuses
    /// values the device cannot reach (the bad value in the error) and
    /// then changes nothing.
    pub fn restore_state(&mut self, saved: &I8042Snapshot) -> Result<(), RestoreError> {
        let s = &saved.state;
        for (field, len) in
            [("controller queue length", s.controller_queue.len()), ("keyboard queue length", s.keyboard_queue.len())]
        {
            if len > I8042_QUEUE_LEN {
                return Err(bad(field, len as u64, "more than the queue holds"));
            }
        }
        if !(1..=3).contains(&s.keyboard_set) {
            return Err(bad("keyboard scan code set", s.keyboard_set.into(), "not 1, 2 or 3"));
        }
        if let Some(c) = s.pending_command {
            let waits = matches!(c, CMD_WRITE_CTR..=0x7f)
                || matches!(c, CMD_WRITE_OUTPUT_PORT | CMD_WRITE_KBD_BUFFER | CMD_WRITE_AUX_BUFFER | CMD_WRITE_AUX);
            if !waits {
                return Err(bad("pending controller command", c.into(), "takes no data byte"));
            }
        }
        if let Some(c) = s.keyboard_pending {
            if !matches!(c, KBD_SET_LEDS | KBD_SCANCODE_SET | KBD_TYPEMATIC) {
                return Err(bad("pending keyboard command", c.into(), "takes no parameter"));
            }
        }
        self.state = s.clone();
        let line = match self.state.output {
            Some((_, OutputSource::Controller | OutputSource::Keyboard)) if self.state.ctr & CTR_KBD_INT != 0 => {
                &self.kbd_irq
            }
            Some((_, OutputSource::Aux | OutputSource::AuxTimeout)) if self.state.ctr & CTR_AUX_INT != 0 => {
                &self.aux_irq
            }
            _ => return Ok(()),
        };
        if let Err(e) = line.trigger() {
            log::warn!("i8042: cannot raise its interrupt: {e}");
        }
        Ok(())
    }
}
