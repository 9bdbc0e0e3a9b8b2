//! The i8042 PS/2 controller, with a keyboard on its first port and an
//! empty second (auxiliary, mouse) port: enough for Linux's `i8042` and
//! `atkbd` drivers to probe it at once (every command they send is
//! answered, so no probe waits for a timeout), for the machine reset
//! (`reboot=k`, and the ACPI reset register) and for a host-sent
//! Ctrl+Alt+Del ([`I8042::send_ctrl_alt_del`]).
//!
//! The model: one output buffer byte the guest reads at port 0x60, filled
//! from two queues in order: the controller's own bytes (answers to its
//! commands, and the bytes its loopback commands 0xd2/0xd3 place as if
//! from a port, which real controllers deliver whatever the ports' disable
//! bits say), then the keyboard's bytes (when the keyboard port is
//! enabled). A byte entering the output buffer raises IRQ 1 (keyboard
//! data) or IRQ 12 (auxiliary data) when the controller configuration byte
//! (CTR) enables that interrupt.
//! The keyboard speaks scan code set 2; with the CTR's translation bit
//! set (as a BIOS leaves it, and Linux keeps it) the controller turns its
//! bytes into set 1, as real controllers do. The auxiliary port answers
//! its loopback command; a byte sent to its (absent) device comes back as
//! 0xfe with the status register's timeout bit, so a mouse probe fails at
//! once.
//!
//! Everything the device remembers is in [`I8042State`], a plain struct.

use std::collections::VecDeque;
use std::sync::Arc;

use super::{ExitLine, GuestExitRequest};
use crate::bus::BusDevice;
use crate::interrupt::IrqLine;

// Status register (port 0x64, read).
const STS_OBF: u8 = 0x01;
const STS_SYS: u8 = 0x04;
const STS_CMD: u8 = 0x08;
/// Keyboard not inhibited (no keylock).
const STS_UNLOCKED: u8 = 0x10;
const STS_AUX: u8 = 0x20;
const STS_TIMEOUT: u8 = 0x40;

// Controller configuration byte (CTR).
const CTR_KBD_INT: u8 = 0x01;
const CTR_AUX_INT: u8 = 0x02;
const CTR_SYS: u8 = 0x04;
const CTR_KBD_DISABLE: u8 = 0x10;
const CTR_AUX_DISABLE: u8 = 0x20;
const CTR_XLATE: u8 = 0x40;
/// The CTR a BIOS leaves: keyboard interrupt on, system flag, auxiliary
/// port disabled, translation on.
const CTR_POWER_ON: u8 = CTR_KBD_INT | CTR_SYS | CTR_AUX_DISABLE | CTR_XLATE;

// Output port: bit 0 is the CPU reset line (low resets), bit 1 the A20
// gate; bits 4 and 5 reflect the output buffer when read.
const OUTPORT_RESET: u8 = 0x01;
const OUTPORT_POWER_ON: u8 = 0x03;
const OUTPORT_KBD_OBF: u8 = 0x10;
const OUTPORT_AUX_OBF: u8 = 0x20;

// Controller commands (port 0x64, write).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_INPUT_PORT: u8 = 0xc0;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
const CMD_WRITE_AUX_BUFFER: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_A20_DISABLE: u8 = 0xdd;
const CMD_A20_ENABLE: u8 = 0xdf;
const CMD_PULSE_FIRST: u8 = 0xf0;

const SELF_TEST_PASSED: u8 = 0x55;
const PORT_TEST_PASSED: u8 = 0x00;

// Keyboard commands (port 0x60, write) and answers.
const KBD_SET_LEDS: u8 = 0xed;
const KBD_ECHO: u8 = 0xee;
const KBD_SCANCODE_SET: u8 = 0xf0;
const KBD_IDENTIFY: u8 = 0xf2;
const KBD_TYPEMATIC: u8 = 0xf3;
const KBD_ENABLE: u8 = 0xf4;
const KBD_DISABLE: u8 = 0xf5;
const KBD_DEFAULTS: u8 = 0xf6;
const KBD_RESEND: u8 = 0xfe;
const KBD_RESET: u8 = 0xff;
const KBD_ACK: u8 = 0xfa;
const KBD_BAT_OK: u8 = 0xaa;
/// An MF2 keyboard's identification bytes.
const KBD_ID: [u8; 2] = [0xab, 0x83];
/// The answer of a port with no device, and the keyboard's "resend".
const NO_DEVICE: u8 = 0xfe;

// Set 2 scan codes ember sends (a break code is the make code after 0xf0).
const SC2_EXTENDED: u8 = 0xe0;
const SC2_BREAK: u8 = 0xf0;
const SC2_LEFT_CTRL: u8 = 0x14;
const SC2_LEFT_ALT: u8 = 0x11;
const SC2_DELETE: u8 = 0x71; // extended

/// How many bytes each queue holds; more is dropped (a guest cannot grow
/// them: each command adds at most three bytes to a queue).
pub const I8042_QUEUE_LEN: usize = 16;

/// Errors from the host side of the i8042.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum I8042Error {
    /// The keyboard's queue has no room for the key sequence.
    #[error("the i8042 keyboard queue is full ({0} bytes waiting): the guest is not reading its keyboard")]
    QueueFull(usize),
    /// The guest disabled keyboard scanning (or the VM has no keyboard),
    /// so keys are not sent.
    #[error("the guest has disabled the keyboard (scanning off)")]
    KeyboardDisabled,
}

/// Where the byte in the output buffer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OutputSource {
    /// The controller's answer to a command (or a byte the guest asked it
    /// to place, command 0xd2): keyboard data as far as the status says.
    Controller,
    /// The keyboard.
    Keyboard,
    /// The auxiliary port.
    Aux,
    /// The auxiliary port, reporting that no device answered (status
    /// timeout bit set).
    AuxTimeout,
}

/// Everything the i8042 and its keyboard remember.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct I8042State {
    /// The controller configuration byte.
    pub ctr: u8,
    /// The output port (bit 0: reset line; bit 1: A20).
    pub output_port: u8,
    /// Whether the last write went to the command port (status bit 3).
    pub last_write_was_command: bool,
    /// The controller command waiting for its data byte at port 0x60.
    pub pending_command: Option<u8>,
    /// The byte the guest reads next at port 0x60, and its source.
    pub output: Option<(u8, OutputSource)>,
    /// The last byte read from port 0x60 (what an empty buffer reads).
    pub last_output: u8,
    /// The controller's bytes waiting for the output buffer, with the
    /// source the status register will show.
    pub controller_queue: VecDeque<(u8, OutputSource)>,
    /// Keyboard bytes (scan code set 2, untranslated) waiting.
    pub keyboard_queue: VecDeque<u8>,
    /// A set-2 break prefix (0xf0) the translation is holding.
    pub translate_break: bool,
    /// The keyboard command waiting for its parameter byte.
    pub keyboard_pending: Option<u8>,
    /// Whether the keyboard sends keys (commands 0xf4/0xf5).
    pub keyboard_scanning: bool,
    /// The keyboard's scan code set (1–3; it always sends set 2 codes).
    pub keyboard_set: u8,
    /// The keyboard's LED bits.
    pub keyboard_leds: u8,
    /// The keyboard's last byte sent (for its resend command).
    pub keyboard_last: u8,
}

impl Default for I8042State {
    fn default() -> Self {
        I8042State {
            ctr: CTR_POWER_ON,
            output_port: OUTPORT_POWER_ON,
            last_write_was_command: false,
            pending_command: None,
            output: None,
            last_output: 0,
            controller_queue: VecDeque::with_capacity(I8042_QUEUE_LEN),
            keyboard_queue: VecDeque::with_capacity(I8042_QUEUE_LEN),
            translate_break: false,
            keyboard_pending: None,
            keyboard_scanning: true,
            keyboard_set: 2,
            keyboard_leds: 0,
            keyboard_last: KBD_ACK,
        }
    }
}

/// Scan code set 2 to set 1, as the controller's translation does, for
/// the bytes ember's keyboard sends (its answers and the keys of
/// [`I8042::send_ctrl_alt_del`]); bytes from 0x80 up pass unchanged but
/// for the identification byte 0x83.
fn translate(b: u8) -> u8 {
    match b {
        0x01 => 0x43,
        0x02 => 0x41,
        0x03 => 0x3f,
        SC2_LEFT_ALT => 0x38,
        SC2_LEFT_CTRL => 0x1d,
        SC2_DELETE => 0x53,
        0x83 => 0x41,
        other => other,
    }
}

/// The i8042 at ports 0x60..=0x64 (offset 0 the data port, offset 4 the
/// status/command port).
pub struct I8042 {
    state: I8042State,
    exit: Arc<dyn ExitLine>,
    kbd_irq: Arc<dyn IrqLine>,
    aux_irq: Arc<dyn IrqLine>,
    /// Unknown commands logged so far (the log is budgeted).
    unknown_logged: u32,
}

/// Most unknown-command log lines per device.
const UNKNOWN_LOG_BUDGET: u32 = 8;

fn push_bounded<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() < I8042_QUEUE_LEN {
        q.push_back(v);
    }
}

impl I8042 {
    /// Creates the device in its power-on state: `exit` is pulled on a
    /// reset, `kbd_irq` is IRQ 1 and `aux_irq` IRQ 12.
    pub fn new(exit: Arc<dyn ExitLine>, kbd_irq: Arc<dyn IrqLine>, aux_irq: Arc<dyn IrqLine>) -> Self {
        I8042 { state: I8042State::default(), exit, kbd_irq, aux_irq, unknown_logged: 0 }
    }

    /// What the device remembers.
    pub fn state(&self) -> &I8042State {
        &self.state
    }

    /// Sends the keys Ctrl+Alt+Del from the keyboard: the make codes of
    /// left Ctrl, left Alt and Delete, then their break codes, in reverse
    /// (scan code set 2, which the controller translates to set 1 when
    /// the guest asked for translation), raising IRQ 1 as the first byte
    /// reaches the output buffer. Linux's `atkbd` driver turns this into
    /// its Ctrl-Alt-Del action (by default a reboot).
    pub fn send_ctrl_alt_del(&mut self) -> Result<(), I8042Error> {
        let keys = [
            SC2_LEFT_CTRL,
            SC2_LEFT_ALT,
            SC2_EXTENDED,
            SC2_DELETE,
            SC2_EXTENDED,
            SC2_BREAK,
            SC2_DELETE,
            SC2_BREAK,
            SC2_LEFT_ALT,
            SC2_BREAK,
            SC2_LEFT_CTRL,
        ];
        if !self.state.keyboard_scanning {
            return Err(I8042Error::KeyboardDisabled);
        }
        let waiting = self.state.keyboard_queue.len();
        if waiting + keys.len() > I8042_QUEUE_LEN {
            return Err(I8042Error::QueueFull(waiting));
        }
        self.state.keyboard_queue.extend(keys);
        self.refill();
        Ok(())
    }

    fn status(&self) -> u8 {
        let s = &self.state;
        let mut v = STS_UNLOCKED;
        if s.ctr & CTR_SYS != 0 {
            v |= STS_SYS;
        }
        if s.last_write_was_command {
            v |= STS_CMD;
        }
        match s.output {
            None => {}
            Some((_, OutputSource::Controller | OutputSource::Keyboard)) => v |= STS_OBF,
            Some((_, OutputSource::Aux)) => v |= STS_OBF | STS_AUX,
            Some((_, OutputSource::AuxTimeout)) => v |= STS_OBF | STS_AUX | STS_TIMEOUT,
        }
        v
    }

    /// Moves the next waiting byte into an empty output buffer and raises
    /// its interrupt if the CTR enables it.
    fn refill(&mut self) {
        let s = &mut self.state;
        if s.output.is_some() {
            return;
        }
        while s.output.is_none() {
            if let Some(out) = s.controller_queue.pop_front() {
                s.output = Some(out);
            } else if s.ctr & CTR_KBD_DISABLE == 0 && !s.keyboard_queue.is_empty() {
                let b = s.keyboard_queue.pop_front().unwrap_or_default();
                if s.ctr & CTR_XLATE == 0 {
                    s.output = Some((b, OutputSource::Keyboard));
                } else if b == SC2_BREAK {
                    // Translation folds the break prefix into the next byte.
                    s.translate_break = true;
                } else {
                    let t = translate(b) | if s.translate_break { 0x80 } else { 0 };
                    s.translate_break = false;
                    s.output = Some((t, OutputSource::Keyboard));
                }
            } else {
                return;
            }
        }
        let line = match s.output {
            Some((_, OutputSource::Controller | OutputSource::Keyboard)) if s.ctr & CTR_KBD_INT != 0 => &self.kbd_irq,
            Some((_, OutputSource::Aux | OutputSource::AuxTimeout)) if s.ctr & CTR_AUX_INT != 0 => &self.aux_irq,
            _ => return,
        };
        if let Err(e) = line.trigger() {
            log::warn!("i8042: cannot raise its interrupt: {e}");
        }
    }

    fn answer(&mut self, b: u8) {
        self.place(b, OutputSource::Controller)
    }

    /// Queues a byte the controller itself produces, as from `source`.
    fn place(&mut self, b: u8, source: OutputSource) {
        push_bounded(&mut self.state.controller_queue, (b, source));
        self.refill();
    }

    fn keyboard_send(&mut self, bytes: &[u8]) {
        for &b in bytes {
            push_bounded(&mut self.state.keyboard_queue, b);
            self.state.keyboard_last = b;
        }
        self.refill();
    }

    fn reset(&mut self) {
        self.exit.request_exit(GuestExitRequest::Reset);
    }

    fn log_unknown(&mut self, what: &str, b: u8) {
        if self.unknown_logged < UNKNOWN_LOG_BUDGET {
            self.unknown_logged += 1;
            log::info!("i8042: ignoring unknown {what} {b:#04x}");
        }
    }

    /// A write to the command port.
    fn command(&mut self, cmd: u8) {
        let s = &mut self.state;
        s.pending_command = None;
        match cmd {
            CMD_READ_CTR => {
                let ctr = s.ctr;
                self.answer(ctr)
            }
            // The other bytes of the controller's RAM read as zero.
            0x21..=0x3f => self.answer(0),
            CMD_WRITE_CTR..=0x7f
            | CMD_WRITE_OUTPUT_PORT
            | CMD_WRITE_KBD_BUFFER
            | CMD_WRITE_AUX_BUFFER
            | CMD_WRITE_AUX => s.pending_command = Some(cmd),
            CMD_AUX_DISABLE => s.ctr |= CTR_AUX_DISABLE,
            CMD_AUX_ENABLE => s.ctr &= !CTR_AUX_DISABLE,
            CMD_AUX_TEST | CMD_KBD_TEST => self.answer(PORT_TEST_PASSED),
            CMD_SELF_TEST => {
                s.ctr |= CTR_SYS;
                self.answer(SELF_TEST_PASSED)
            }
            CMD_KBD_DISABLE => s.ctr |= CTR_KBD_DISABLE,
            CMD_KBD_ENABLE => {
                s.ctr &= !CTR_KBD_DISABLE;
                self.refill();
            }
            CMD_READ_INPUT_PORT => self.answer(0),
            CMD_READ_OUTPUT_PORT => {
                let mut v = s.output_port & !(OUTPORT_KBD_OBF | OUTPORT_AUX_OBF);
                v |= match s.output {
                    Some((_, OutputSource::Aux | OutputSource::AuxTimeout)) => OUTPORT_AUX_OBF,
                    Some(_) => OUTPORT_KBD_OBF,
                    None => 0,
                };
                self.answer(v)
            }
            CMD_A20_DISABLE | CMD_A20_ENABLE => {}
            // Pulse output port bits 0-3 low where the command's bit is 0:
            // bit 0 is the reset line (0xfe is the usual reset command).
            CMD_PULSE_FIRST..=0xff => {
                if cmd & OUTPORT_RESET == 0 {
                    self.reset()
                }
            }
            _ => self.log_unknown("controller command", cmd),
        }
    }

    /// A write to the data port: a pending controller command's data byte,
    /// else a byte for the keyboard.
    fn data(&mut self, b: u8) {
        let s = &mut self.state;
        match s.pending_command.take() {
            Some(CMD_WRITE_CTR) => {
                s.ctr = b;
                self.refill();
            }
            Some(0x61..=0x7f) => {}
            Some(CMD_WRITE_OUTPUT_PORT) => {
                s.output_port = b;
                if b & OUTPORT_RESET == 0 {
                    self.reset();
                }
            }
            Some(CMD_WRITE_KBD_BUFFER) => self.place(b, OutputSource::Keyboard),
            Some(CMD_WRITE_AUX_BUFFER) => self.place(b, OutputSource::Aux),
            // No device on the auxiliary port: the controller reports a
            // timeout.
            Some(CMD_WRITE_AUX) => self.place(NO_DEVICE, OutputSource::AuxTimeout),
            Some(_) | None => {
                // Sending to the keyboard enables its port, as on a PC.
                s.ctr &= !CTR_KBD_DISABLE;
                self.keyboard(b);
            }
        }
    }

    /// A byte the keyboard receives: a command, or a command's parameter.
    fn keyboard(&mut self, b: u8) {
        let s = &mut self.state;
        if let Some(cmd) = s.keyboard_pending.take() {
            match cmd {
                KBD_SET_LEDS => s.keyboard_leds = b & 0x07,
                KBD_SCANCODE_SET if b == 0 => {
                    let set = s.keyboard_set;
                    return self.keyboard_send(&[KBD_ACK, set]);
                }
                KBD_SCANCODE_SET if (1..=3).contains(&b) => s.keyboard_set = b,
                KBD_SCANCODE_SET => return self.keyboard_send(&[KBD_RESEND]),
                _ => {} // typematic rate and delay: accepted
            }
            return self.keyboard_send(&[KBD_ACK]);
        }
        match b {
            KBD_RESET => {
                s.keyboard_scanning = true;
                s.keyboard_set = 2;
                s.keyboard_leds = 0;
                self.keyboard_send(&[KBD_ACK, KBD_BAT_OK])
            }
            KBD_RESEND => {
                let last = s.keyboard_last;
                self.keyboard_send(&[last])
            }
            KBD_DEFAULTS | KBD_DISABLE | KBD_ENABLE => {
                if b != KBD_ENABLE {
                    s.keyboard_set = 2;
                    s.keyboard_leds = 0;
                }
                if b != KBD_DEFAULTS {
                    s.keyboard_scanning = b == KBD_ENABLE;
                }
                self.keyboard_send(&[KBD_ACK])
            }
            KBD_SET_LEDS | KBD_SCANCODE_SET | KBD_TYPEMATIC => {
                s.keyboard_pending = Some(b);
                self.keyboard_send(&[KBD_ACK])
            }
            KBD_IDENTIFY => self.keyboard_send(&[KBD_ACK, KBD_ID[0], KBD_ID[1]]),
            KBD_ECHO => self.keyboard_send(&[KBD_ECHO]),
            // Set 3 key-type commands: accepted.
            0xf7..=0xfd => self.keyboard_send(&[KBD_ACK]),
            _ => {
                self.log_unknown("keyboard command", b);
                self.keyboard_send(&[KBD_RESEND])
            }
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            0 => match self.state.output.take() {
                Some((b, _)) => {
                    self.state.last_output = b;
                    self.refill();
                    b
                }
                None => self.state.last_output,
            },
            4 => self.status(),
            _ => 0xff,
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            0 => {
                self.state.last_write_was_command = false;
                self.data(v)
            }
            4 => {
                self.state.last_write_was_command = true;
                self.command(v)
            }
            _ => {}
        }
    }
}

mod state;

pub use state::I8042Snapshot;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::CountingIrq;
    use crate::legacy::test_util::RecordingExit;

    struct Rig {
        dev: I8042,
        exit: Arc<RecordingExit>,
        kbd: Arc<CountingIrq>,
        aux: Arc<CountingIrq>,
    }

    fn rig() -> Rig {
        let (exit, kbd, aux) =
            (Arc::new(RecordingExit::default()), Arc::new(CountingIrq::default()), Arc::new(CountingIrq::default()));
        Rig { dev: I8042::new(exit.clone(), kbd.clone(), aux.clone()), exit, kbd, aux }
    }

    impl Rig {
        fn status(&mut self) -> u8 {
            let mut b = [0u8];
            self.dev.read(4, &mut b);
            b[0]
        }
        fn data(&mut self) -> u8 {
            let mut b = [0u8];
            self.dev.read(0, &mut b);
            b[0]
        }
        fn cmd(&mut self, c: u8) {
            self.dev.write(4, &[c]);
        }
        fn put(&mut self, d: u8) {
            self.dev.write(0, &[d]);
        }
        /// Reads every byte waiting, as a polling driver does.
        fn drain(&mut self) -> Vec<(u8, u8)> {
            let mut out = Vec::new();
            while self.status() & STS_OBF != 0 {
                let st = self.status();
                out.push((st, self.data()));
                assert!(out.len() < 64);
            }
            out
        }
        fn bytes(&mut self) -> Vec<u8> {
            self.drain().into_iter().map(|(_, b)| b).collect()
        }
    }

    #[test]
    fn power_on_status_and_ctr() {
        let mut r = rig();
        assert_eq!(r.status(), STS_UNLOCKED | STS_SYS);
        r.cmd(CMD_READ_CTR);
        assert_eq!(r.status() & (STS_OBF | STS_AUX | STS_CMD), STS_OBF | STS_CMD);
        assert_eq!(r.data(), CTR_POWER_ON);
        assert_eq!(r.status() & STS_OBF, 0);
    }

    /// The sequence of Linux's i8042_controller_init: read the CTR twice,
    /// disable the keyboard port and its interrupt, write it back; then
    /// the self tests. Every command is answered, with no interrupt while
    /// the interrupts are off.
    #[test]
    fn linux_controller_init_sequence() {
        let mut r = rig();
        r.cmd(CMD_KBD_DISABLE);
        r.cmd(CMD_AUX_DISABLE);
        assert!(r.drain().is_empty());
        let mut ctr = [0u8; 2];
        for c in &mut ctr {
            r.cmd(CMD_READ_CTR);
            *c = r.data();
        }
        assert_eq!(ctr[0], ctr[1]);
        let new = (ctr[0] | CTR_KBD_DISABLE) & !CTR_KBD_INT;
        r.cmd(CMD_WRITE_CTR);
        assert_eq!(r.status() & STS_CMD, STS_CMD);
        r.put(new);
        r.cmd(CMD_READ_CTR);
        assert_eq!(r.bytes(), [new]);
        r.cmd(CMD_SELF_TEST);
        assert_eq!(r.bytes(), [SELF_TEST_PASSED]);
        r.cmd(CMD_KBD_TEST);
        assert_eq!(r.bytes(), [PORT_TEST_PASSED]);
        r.cmd(CMD_AUX_TEST);
        assert_eq!(r.bytes(), [PORT_TEST_PASSED]);
        // IRQ 1 was raised only for the two CTR reads (interrupt still on).
        assert_eq!(r.kbd.count(), 2);
        assert_eq!(r.aux.count(), 0);
        assert!(r.exit.0.lock().unwrap().is_empty());
    }

    /// Linux's AUX port check: the loopback echoes with the AUX status bit
    /// (even with the port disabled, as the power-on CTR has it),
    /// disable/enable show in the CTR, and the loopback raises IRQ 12 when
    /// the CTR enables it; a byte for the (absent) mouse times out.
    #[test]
    fn aux_port_loopback_and_absent_mouse() {
        let mut r = rig();
        r.cmd(CMD_WRITE_AUX_BUFFER);
        r.put(0x5a);
        assert_eq!(r.drain(), [(STS_UNLOCKED | STS_SYS | STS_OBF | STS_AUX, 0x5a)]);
        r.cmd(CMD_AUX_DISABLE);
        r.cmd(CMD_READ_CTR);
        assert_ne!(r.bytes()[0] & CTR_AUX_DISABLE, 0);
        r.cmd(CMD_AUX_ENABLE);
        r.cmd(CMD_READ_CTR);
        let ctr = r.bytes()[0];
        assert_eq!(ctr & CTR_AUX_DISABLE, 0);
        // The MUX probe's third loopback byte comes back unchanged: no MUX.
        for b in [0xf0, 0x56, 0xa4] {
            r.cmd(CMD_WRITE_AUX_BUFFER);
            r.put(b);
            assert_eq!(r.bytes(), [b]);
        }
        assert_eq!(r.aux.count(), 0);
        r.cmd(CMD_WRITE_CTR);
        r.put(ctr | CTR_AUX_INT);
        r.cmd(CMD_WRITE_AUX_BUFFER);
        r.put(0xa5);
        assert_eq!(r.aux.count(), 1);
        assert_eq!(r.bytes(), [0xa5]);
        // A mouse command: 0xfe with the timeout bit, IRQ 12.
        r.cmd(CMD_WRITE_AUX);
        r.put(0xf2);
        assert_eq!(r.drain(), [(STS_UNLOCKED | STS_SYS | STS_OBF | STS_AUX | STS_TIMEOUT, NO_DEVICE)]);
        assert_eq!(r.aux.count(), 2);
    }

    /// atkbd's probe and activation (translated): identify, LEDs,
    /// typematic rate, enable; every byte acknowledged, the ID translated.
    #[test]
    fn keyboard_commands_linux_sends() {
        let mut r = rig();
        r.put(KBD_DISABLE);
        assert_eq!(r.bytes(), [KBD_ACK]);
        r.put(KBD_IDENTIFY);
        assert_eq!(r.bytes(), [KBD_ACK, 0xab, 0x41]);
        r.put(KBD_SET_LEDS);
        r.put(0x07);
        assert_eq!(r.bytes(), [KBD_ACK, KBD_ACK]);
        assert_eq!(r.dev.state().keyboard_leds, 7);
        r.put(KBD_TYPEMATIC);
        r.put(0x00);
        r.put(KBD_ENABLE);
        assert_eq!(r.bytes(), [KBD_ACK, KBD_ACK, KBD_ACK]);
        assert!(r.dev.state().keyboard_scanning);
        r.put(KBD_ECHO);
        assert_eq!(r.bytes(), [KBD_ECHO]);
        r.put(KBD_RESET);
        assert_eq!(r.bytes(), [KBD_ACK, KBD_BAT_OK]);
        // Untranslated, the ID is the keyboard's own.
        r.cmd(CMD_WRITE_CTR);
        r.put(CTR_KBD_INT | CTR_SYS);
        r.put(KBD_IDENTIFY);
        assert_eq!(r.bytes(), [KBD_ACK, 0xab, 0x83]);
        r.put(KBD_SCANCODE_SET);
        r.put(0);
        assert_eq!(r.bytes(), [KBD_ACK, KBD_ACK, 2]);
        r.put(KBD_SCANCODE_SET);
        r.put(9);
        assert_eq!(r.bytes(), [KBD_ACK, KBD_RESEND]);
        r.put(0x42);
        assert_eq!(r.bytes(), [KBD_RESEND]);
        r.put(KBD_RESEND);
        assert_eq!(r.bytes(), [KBD_RESEND]);
        // Every keyboard byte raised IRQ 1 (the interrupt is on).
        assert_eq!(r.kbd.count(), 22);
    }

    #[test]
    fn keyboard_bytes_wait_while_its_port_is_disabled() {
        let mut r = rig();
        r.cmd(CMD_KBD_DISABLE);
        r.dev.send_ctrl_alt_del().unwrap();
        assert!(r.drain().is_empty());
        assert_eq!(r.kbd.count(), 0);
        r.cmd(CMD_KBD_ENABLE);
        assert_eq!(r.kbd.count(), 1);
        assert_eq!(r.bytes().len(), 8);
    }

    /// Ctrl+Alt+Del as Linux's atkbd reads it through the translation:
    /// set 1 make codes, then break codes (make | 0x80), one interrupt per
    /// byte as the driver reads them.
    #[test]
    fn ctrl_alt_del_translated_and_raw() {
        let mut r = rig();
        r.dev.send_ctrl_alt_del().unwrap();
        assert_eq!(r.kbd.count(), 1);
        assert_eq!(r.bytes(), [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]);
        assert_eq!(r.kbd.count(), 8);
        // Without translation, set 2 as the keyboard sends it.
        r.cmd(CMD_WRITE_CTR);
        r.put(CTR_KBD_INT);
        r.dev.send_ctrl_alt_del().unwrap();
        assert_eq!(r.bytes(), [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14]);
        // Interrupt off: queued and readable, no IRQ.
        r.cmd(CMD_WRITE_CTR);
        r.put(CTR_XLATE);
        let before = r.kbd.count();
        r.dev.send_ctrl_alt_del().unwrap();
        assert_eq!(r.kbd.count(), before);
        assert_eq!(r.bytes().len(), 8);
    }

    #[test]
    fn ctrl_alt_del_errors() {
        let mut r = rig();
        r.dev.send_ctrl_alt_del().unwrap();
        // Nobody reads: the second sequence does not fit.
        assert_eq!(r.dev.send_ctrl_alt_del(), Err(I8042Error::QueueFull(10)));
        r.drain();
        r.put(KBD_DISABLE);
        r.drain();
        assert_eq!(r.dev.send_ctrl_alt_del(), Err(I8042Error::KeyboardDisabled));
    }

    #[test]
    fn resets() {
        for (cmd, data) in [(0xfe, None), (0xf0, None), (CMD_WRITE_OUTPUT_PORT, Some(0x02))] {
            let mut r = rig();
            r.cmd(cmd);
            if let Some(d) = data {
                r.put(d);
            }
            assert_eq!(*r.exit.0.lock().unwrap(), vec![GuestExitRequest::Reset], "{cmd:#x}");
        }
        let mut r = rig();
        // A keyboard byte 0xfe, odd pulse commands and an output port
        // with the reset line high do not reset.
        r.put(0xfe);
        assert_eq!(r.bytes(), [KBD_ACK], "the keyboard's resend");
        r.cmd(0xff);
        r.cmd(0xfd);
        r.cmd(CMD_WRITE_OUTPUT_PORT);
        r.put(0x03);
        r.cmd(CMD_READ_OUTPUT_PORT);
        assert_eq!(r.bytes().last(), Some(&0x03));
        assert!(r.exit.0.lock().unwrap().is_empty());
    }

    #[test]
    fn hostile_input_is_bounded() {
        let mut r = rig();
        for i in 0..10_000u32 {
            r.dev.write((i % 7) as u64, &[(i * 37) as u8, 1, 2]);
            let mut b = [0u8; 4];
            r.dev.read((i % 5) as u64, &mut b);
        }
        let s = r.dev.state();
        assert!(s.controller_queue.len() <= I8042_QUEUE_LEN);
        assert!(s.keyboard_queue.len() <= I8042_QUEUE_LEN);
        // Queue overflow: answers beyond the bound are dropped.
        let mut r = rig();
        for _ in 0..100 {
            r.put(KBD_ECHO);
        }
        assert_eq!(r.bytes().len(), I8042_QUEUE_LEN + 1);
        let mut b = [0u8];
        r.dev.read(2, &mut b);
        assert_eq!(b, [0xff]);
        // An empty buffer reads the last byte again.
        assert_eq!(r.data(), KBD_ECHO);
    }

    #[test]
    fn save_restore_round_trip_and_corrupt_states() {
        let mut r = rig();
        r.cmd(0x20); // read CTR: a byte waits in the output buffer
        r.put(0xed); // set LEDs: the keyboard waits for its parameter
        let saved = r.dev.save_state();
        let mut fresh = rig();
        let before = fresh.kbd.count();
        fresh.dev.restore_state(&saved).unwrap();
        assert_eq!(fresh.dev.save_state(), saved);
        assert_eq!(fresh.kbd.count(), before + 1, "the waiting byte's interrupt is raised again");
        assert_eq!(fresh.dev.state(), r.dev.state());

        let fresh = rig();
        let before = fresh.dev.save_state();
        let mut bad = saved.clone();
        bad.state.keyboard_set = 7;
        let mut d = fresh.dev;
        assert!(d.restore_state(&bad).unwrap_err().to_string().contains("set 0x7"));
        let mut bad = saved.clone();
        bad.state.keyboard_queue = std::iter::repeat_n(0u8, I8042_QUEUE_LEN + 1).collect();
        assert!(d.restore_state(&bad).unwrap_err().to_string().contains("0x11"));
        let mut bad = saved.clone();
        bad.state.pending_command = Some(0xaa);
        assert!(d.restore_state(&bad).unwrap_err().to_string().contains("0xaa"));
        let mut bad = saved;
        bad.state.keyboard_pending = Some(0xf4);
        assert!(d.restore_state(&bad).unwrap_err().to_string().contains("0xf4"));
        assert_eq!(d.save_state(), before);
    }
}
