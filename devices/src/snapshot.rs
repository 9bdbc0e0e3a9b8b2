//! The errors of saving and restoring device state.
//!
//! Each device saves its state as a plain serde type (no host resources:
//! no file descriptors, no pointers) and restores it into a freshly built
//! device of the same configuration. A saved state comes from a file and
//! is hostile input: restore checks every field before changing anything,
//! refuses a bad one with a [`RestoreError`] naming it and its value, and
//! leaves the device as it was built.

/// Why a device's state cannot be saved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SaveError {
    /// The device holds state a snapshot cannot carry.
    #[error("{device} cannot be saved: {why}")]
    Unsupported {
        /// The device.
        device: &'static str,
        /// What it holds.
        why: &'static str,
    },
    /// The device runs but did not report its live queues.
    #[error("virtio device type {device_type} is active but does not report its queues")]
    QueuesUnavailable {
        /// Its virtio device ID.
        device_type: u32,
    },
}

/// Why a saved device state cannot be put back (the bad value in the
/// message).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreError {
    /// The state is of another virtio device type.
    #[error("saved virtio device type {saved}, but this device is type {actual}")]
    DeviceType {
        /// Type in the state.
        saved: u32,
        /// Type of the device restored into.
        actual: u32,
    },
    /// The state has another number of queues than the device.
    #[error("{device}: saved {saved} queues, but the device has {actual}")]
    QueueCount {
        /// The device.
        device: &'static str,
        /// Queues in the state.
        saved: usize,
        /// Queues of the device.
        actual: usize,
    },
    /// A queue size that is zero, not a power of two, or above the
    /// device's maximum.
    #[error("queue {queue}: saved size {size} is not a power of two in 1..={max}")]
    QueueSize {
        /// Queue index.
        queue: usize,
        /// Saved size.
        size: u16,
        /// The device's maximum.
        max: u16,
    },
    /// Ready rings that overlap or lie outside guest memory.
    #[error(
        "queue {queue}: saved rings (descriptors {desc:#x}, available {avail:#x}, used {used:#x}) are refused: {why}"
    )]
    QueueRings {
        /// Queue index.
        queue: usize,
        /// Descriptor table address.
        desc: u64,
        /// Available ring address.
        avail: u64,
        /// Used ring address.
        used: u64,
        /// What is wrong with them.
        why: &'static str,
    },
    /// Driver features the device does not offer.
    #[error("saved driver features {features:#x} include {extra:#x}, which the device does not offer")]
    Features {
        /// Saved features.
        features: u64,
        /// The bits not offered.
        extra: u64,
    },
    /// A field whose saved value is impossible.
    #[error("{device}: saved {field} {value:#x} is invalid: {why}")]
    Value {
        /// The device.
        device: &'static str,
        /// The field.
        field: &'static str,
        /// Its saved value.
        value: u64,
        /// Why it is refused.
        why: &'static str,
    },
    /// The device refused to start with the saved queues.
    #[error("virtio device type {device_type} cannot be activated with its saved queues: {why}")]
    Activate {
        /// Its virtio device ID.
        device_type: u32,
        /// The device's error.
        why: String,
    },
    /// An MSI-X table of another size than the function's.
    #[error("saved MSI-X table has {saved} vectors, the function has {actual}")]
    MsixTableSize {
        /// Entries in the state.
        saved: usize,
        /// Entries of the function.
        actual: usize,
    },
    /// A configuration-space byte whose read-only bits differ from the
    /// function's (another device, or a corrupt state).
    #[error("PCI function 00:{device:02x}.0: saved configuration byte {offset:#x} is {saved:#04x}, read-only bits of {actual:#04x} differ")]
    ConfigByte {
        /// Device number.
        device: u8,
        /// Offset in the configuration space.
        offset: usize,
        /// Saved byte.
        saved: u8,
        /// The function's byte.
        actual: u8,
    },
    /// The saved functions are not the bus's.
    #[error("saved PCI function 00:{device:02x}.0 {why}")]
    PciFunction {
        /// Device number.
        device: u8,
        /// What does not match.
        why: &'static str,
    },
}
