//! The guest's console: a 16550 UART (vm-superio's) on IRQ 4, its output appended to the
//! VM's console log. It takes no input: nothing on the host types into a container VM.

use std::fs::File;
use std::io::{self, Write};

use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};

use crate::snapshot::SerialRecord;
use vmm_sys_util::eventfd::EventFd;

/// The ISA interrupt of the first UART.
pub const SERIAL_IRQ: u32 = 4;

/// Raises the UART's interrupt through an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where console bytes go: the log file, written through so that a crash loses nothing.
pub struct ConsoleLog(pub File);

impl Write for ConsoleLog {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The UART with its interrupt and log.
pub struct SerialPort(Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleLog>);

impl SerialPort {
    pub fn new(interrupt: EventFd, log: File) -> Self {
        Self(Serial::new(IrqTrigger(interrupt), ConsoleLog(log)))
    }

    /// A UART in a saved state.
    pub fn restored(
        interrupt: EventFd,
        log: File,
        record: &SerialRecord,
    ) -> Result<Self, crate::VmmError> {
        let [baud_divisor_low, baud_divisor_high, interrupt_enable, interrupt_identification, line_control, line_status, modem_control, modem_status, scratch] =
            record.registers;
        let state = SerialState {
            baud_divisor_low,
            baud_divisor_high,
            interrupt_enable,
            interrupt_identification,
            line_control,
            line_status,
            modem_control,
            modem_status,
            scratch,
            in_buffer: record.in_buffer.clone(),
        };
        Serial::from_state(&state, IrqTrigger(interrupt), NoEvents, ConsoleLog(log))
            .map(Self)
            .map_err(|e| crate::VmmError::Snapshot(format!("the UART's state: {e:?}")))
    }

    /// The UART's registers, for a snapshot.
    pub fn record(&self) -> SerialRecord {
        let state = self.0.state();
        SerialRecord {
            registers: [
                state.baud_divisor_low,
                state.baud_divisor_high,
                state.interrupt_enable,
                state.interrupt_identification,
                state.line_control,
                state.line_status,
                state.modem_control,
                state.modem_status,
                state.scratch,
            ],
            in_buffer: state.in_buffer,
        }
    }

    pub fn read(&mut self, offset: u8) -> u8 {
        self.0.read(offset)
    }

    pub fn write(&mut self, offset: u8, value: u8) {
        // A failed log write or interrupt loses console output, never the VM.
        let _ = self.0.write(offset, value);
    }
}
