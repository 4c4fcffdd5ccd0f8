//! The one function of the keyboard controller a VM needs: the CPU reset line. The
//! kernel (`reboot=k`) writes 0xfe to port 0x64 to reset; that ends the VM. Reads of the
//! controller return 0 (no data, not busy), so the kernel finds no keyboard.

use super::ResetRequest;

const CMD_RESET_CPU: u8 = 0xfe;

/// The controller's command port.
#[derive(Debug, Default)]
pub struct ResetLine;

impl ResetLine {
    /// A byte written to port 0x64.
    pub fn command(&self, value: u8) -> Option<ResetRequest> {
        (value == CMD_RESET_CPU).then_some(ResetRequest::Reset)
    }
}
