//! The guest's console: a 16550 UART (vm-superio's) on IRQ 4, its output appended to the
//! VM's console log. It takes no input: nothing on the host types into a container VM.

use std::fs::File;
use std::io::{self, Write};

use vm_superio::{Serial, Trigger};
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

    pub fn read(&mut self, offset: u8) -> u8 {
        self.0.read(offset)
    }

    pub fn write(&mut self, offset: u8, value: u8) {
        // A failed log write or interrupt loses console output, never the VM.
        let _ = self.0.write(offset, value);
    }
}
