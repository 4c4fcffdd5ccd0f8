//! virtio-console with one named port: the agent channel.
//!
//! The device offers MULTIPORT with `max_nr_ports` 1, so the guest sees no console but
//! one port, announced over the control queues and named [`berth_agent_proto`]'s
//! `berth.agent` (the agent opens `/dev/vport*` by that name, as with QEMU's
//! virtserialport). Queues: 0 port receive (host to guest), 1 port transmit, 2 control
//! receive, 3 control transmit.
//!
//! Control messages are `{ id: u32, event: u16, value: u16 }` (little-endian), PORT_NAME
//! followed by the name. The exchange: guest DEVICE_READY -> PORT_ADD(0); guest
//! PORT_READY(0) -> PORT_NAME(0, name), PORT_OPEN(0, 1 if the host end is connected).
//!
//! The host end is a unix socket the engine listens on. The worker connects at start and
//! again whenever the connection ends (an engine restarting): while it is down the port
//! is closed to the guest (PORT_OPEN 0), so the guest's writes wait instead of being
//! lost. Bytes from the host are held (at most [`MAX_PENDING`]) until the guest gives
//! receive buffers; the socket is not read while that much is held.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{
    positions, snapshot_worker, Activation, ActiveQueue, Interrupt, VirtioDevice, WorkerLoop,
    WorkerThread, DEVICE_TYPE_CONSOLE, VIRTIO_F_VERSION_1,
};
use crate::snapshot::{DeviceSnapshot, DeviceState};
use crate::VmmError;

const VIRTIO_CONSOLE_F_MULTIPORT: u64 = 1 << 1;
const QUEUE_SIZE: u16 = 128;
const PORT_RECEIVE: usize = 0;
const PORT_TRANSMIT: usize = 1;
const CONTROL_RECEIVE: usize = 2;
const CONTROL_TRANSMIT: usize = 3;

const DEVICE_READY: u16 = 0;
const DEVICE_ADD: u16 = 1;
const PORT_READY: u16 = 3;
const PORT_OPEN: u16 = 6;
const PORT_NAME: u16 = 7;

/// Host bytes held for the guest before the socket is no longer read.
pub const MAX_PENDING: usize = 256 * 1024;
/// Largest control message the guest may send (the header; names go host to guest).
const CONTROL_HEADER: usize = 8;
/// How often a lost host connection is retried.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(100);

const TOKEN_STOP: u64 = 100;
const TOKEN_SOCKET: u64 = 101;

/// The agent channel device.
pub struct Console {
    port_name: String,
    socket_path: PathBuf,
    worker: Option<WorkerThread<Worker>>,
}

impl Console {
    pub fn new(port_name: &str, socket_path: PathBuf) -> Self {
        Self {
            port_name: port_name.to_owned(),
            socket_path,
            worker: None,
        }
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE_CONSOLE
    }

    fn pci_class(&self) -> u32 {
        0x07_80_00
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 4]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_CONSOLE_F_MULTIPORT
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols u16, rows u16, max_nr_ports u32, emerg_wr u32.
        let mut config = [0u8; 12];
        config[4..8].copy_from_slice(&1u32.to_le_bytes());
        for (index, byte) in data.iter_mut().enumerate() {
            *byte = config.get(offset as usize + index).copied().unwrap_or(0);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), VmmError> {
        if activation.queues.len() != 4 {
            return Err(VmmError::Device(format!(
                "the console needs its 4 queues, the driver enabled {}",
                activation.queues.len()
            )));
        }
        let (port_ready, to_guest, control_out) = match activation.restored {
            Some(DeviceState::Console {
                port_ready,
                to_guest,
                control_out,
            }) => (port_ready, to_guest.into(), control_out.into()),
            _ => (false, VecDeque::new(), VecDeque::new()),
        };
        let worker = Worker {
            memory: activation.memory,
            queues: activation.queues,
            interrupt: activation.interrupt,
            port_name: self.port_name.clone(),
            socket_path: self.socket_path.clone(),
            socket: None,
            to_guest,
            control_out,
            port_ready,
            stop: EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Eventfd)?,
        };
        self.worker = Some(WorkerThread::spawn("virtio-console", worker)?);
        Ok(())
    }

    fn save(&mut self) -> Result<DeviceSnapshot, VmmError> {
        snapshot_worker(&mut self.worker, "virtio-console")
    }

    fn reset(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }
}

struct Worker {
    memory: GuestMemoryMmap,
    queues: Vec<ActiveQueue>,
    interrupt: Interrupt,
    port_name: String,
    socket_path: PathBuf,
    socket: Option<UnixStream>,
    to_guest: VecDeque<u8>,
    control_out: VecDeque<Vec<u8>>,
    port_ready: bool,
    stop: EventFd,
}

fn control_message(event: u16, value: u16, extra: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(CONTROL_HEADER + extra.len());
    message.extend_from_slice(&0u32.to_le_bytes());
    message.extend_from_slice(&event.to_le_bytes());
    message.extend_from_slice(&value.to_le_bytes());
    message.extend_from_slice(extra);
    message
}

/// Serves the console's queues once, on the calling thread, with no host connection:
/// control messages, receive buffers and (while disconnected) no transmit. `host_bytes`
/// are pending for the guest, as if the host had sent them. Used by the fuzzing harness.
pub fn serve_once(
    memory: GuestMemoryMmap,
    queues: Vec<virtio_queue::Queue>,
    host_bytes: &[u8],
) -> Result<(), VmmError> {
    let mut active = Vec::new();
    for queue in queues {
        active.push(ActiveQueue {
            queue,
            notify: EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Eventfd)?,
            vector: 0,
        });
    }
    if active.len() != 4 {
        return Err(VmmError::Device("the console has 4 queues".into()));
    }
    let mut worker = Worker {
        memory,
        queues: active,
        interrupt: Interrupt::detached(5),
        port_name: "berth.agent".into(),
        socket_path: PathBuf::new(),
        socket: None,
        to_guest: host_bytes.iter().copied().collect(),
        control_out: VecDeque::new(),
        port_ready: false,
        stop: EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::Eventfd)?,
    };
    // Twice: control messages answered in the first round are delivered in the second.
    worker.serve_queues();
    worker.serve_queues();
    Ok(())
}

impl WorkerLoop for Worker {
    fn run(&mut self) {
        self.serve_until_stopped();
    }

    fn stop_event(&self) -> &EventFd {
        &self.stop
    }

    fn snapshot(&self) -> DeviceSnapshot {
        DeviceSnapshot {
            state: DeviceState::Console {
                port_ready: self.port_ready,
                to_guest: self.to_guest.iter().copied().collect(),
                control_out: self.control_out.iter().cloned().collect(),
            },
            positions: positions(&self.queues),
        }
    }
}

impl Worker {
    fn serve_until_stopped(&mut self) {
        let Ok(epoll) = Epoll::new() else {
            eprintln!("berth vmm: console worker: no epoll");
            return;
        };
        for (index, queue) in self.queues.iter().enumerate() {
            let _ = epoll.ctl(
                ControlOperation::Add,
                queue.notify.as_raw_fd(),
                EpollEvent::new(EventSet::IN, index as u64),
            );
        }
        let _ = epoll.ctl(
            ControlOperation::Add,
            self.stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_STOP),
        );
        let mut socket_registered = false;
        let mut events = vec![EpollEvent::default(); 8];
        // A restored device may have work waiting: serve once before waiting for kicks.
        self.serve_queues();
        loop {
            if self.socket.is_none() && self.connect() {
                // Tell the guest now that the port is open: it holds its writes while
                // the host is away, and would otherwise wait for an unrelated kick.
                self.serve_queues();
            }
            // Read the socket only while there is room for what it brings.
            let want_socket = self.socket.is_some() && self.to_guest.len() < MAX_PENDING;
            if want_socket != socket_registered {
                if let Some(socket) = &self.socket {
                    let operation = if want_socket {
                        ControlOperation::Add
                    } else {
                        ControlOperation::Delete
                    };
                    let _ = epoll.ctl(
                        operation,
                        socket.as_raw_fd(),
                        EpollEvent::new(EventSet::IN, TOKEN_SOCKET),
                    );
                }
                socket_registered = want_socket;
            }
            let timeout = if self.socket.is_none() {
                RECONNECT_INTERVAL.as_millis() as i32
            } else {
                -1
            };
            let count = match epoll.wait(timeout, &mut events) {
                Ok(count) => count,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            for event in &events[..count] {
                match event.data() {
                    TOKEN_STOP => return,
                    TOKEN_SOCKET => {
                        if !self.read_socket() {
                            // The engine went away: unregister with the old descriptor.
                            if let Some(socket) = self.socket.take() {
                                let _ = epoll.ctl(
                                    ControlOperation::Delete,
                                    socket.as_raw_fd(),
                                    EpollEvent::default(),
                                );
                            }
                            socket_registered = false;
                            self.host_connection_changed();
                        }
                    }
                    index => {
                        if let Some(queue) = self.queues.get(index as usize) {
                            let _ = queue.notify.read();
                        }
                    }
                }
            }
            self.serve_queues();
        }
    }

    /// Connects to the engine's socket; whether it did.
    fn connect(&mut self) -> bool {
        match UnixStream::connect(&self.socket_path) {
            Ok(socket) => {
                self.socket = Some(socket);
                self.host_connection_changed();
                true
            }
            Err(_) => false,
        }
    }

    fn host_connection_changed(&mut self) {
        if self.port_ready {
            let open = u16::from(self.socket.is_some());
            self.control_out
                .push_back(control_message(PORT_OPEN, open, &[]));
        }
    }

    /// Reads what the host sent; false when the connection ended.
    fn read_socket(&mut self) -> bool {
        let Some(socket) = self.socket.as_mut() else {
            return false;
        };
        let mut buffer = vec![0u8; (MAX_PENDING - self.to_guest.len()).clamp(1, 64 * 1024)];
        match socket.read(&mut buffer) {
            Ok(0) => false,
            Ok(count) => {
                self.to_guest.extend(&buffer[..count]);
                true
            }
            Err(error) => error.kind() == std::io::ErrorKind::Interrupted,
        }
    }

    fn serve_queues(&mut self) {
        self.take_control_messages();
        self.fill_receive(CONTROL_RECEIVE);
        if self.port_ready {
            self.fill_receive(PORT_RECEIVE);
            self.drain_transmit();
        }
    }

    /// Control messages from the guest.
    fn take_control_messages(&mut self) {
        let queue = &mut self.queues[CONTROL_TRANSMIT];
        let mut used = false;
        let mut messages = Vec::new();
        while let Some(chain) = queue.queue.pop_descriptor_chain(&self.memory) {
            let head = chain.head_index();
            let mut header = [0u8; CONTROL_HEADER];
            let complete = chain
                .clone()
                .reader(&self.memory)
                .ok()
                .and_then(|mut reader| reader.read_exact(&mut header).ok())
                .is_some();
            let _ = queue.queue.add_used(&self.memory, head, 0);
            used = true;
            if complete {
                messages.push(header);
            }
        }
        if used {
            self.notify(CONTROL_TRANSMIT);
        }
        for header in messages {
            let id = u32::from_le_bytes(header[0..4].try_into().unwrap());
            let event = u16::from_le_bytes([header[4], header[5]]);
            let value = u16::from_le_bytes([header[6], header[7]]);
            match event {
                DEVICE_READY if value == 1 => {
                    self.control_out
                        .push_back(control_message(DEVICE_ADD, 0, &[]));
                }
                PORT_READY if id == 0 && value == 1 => {
                    self.port_ready = true;
                    let name = format!("{}\0", self.port_name);
                    self.control_out
                        .push_back(control_message(PORT_NAME, 0, name.as_bytes()));
                    let open = u16::from(self.socket.is_some());
                    self.control_out
                        .push_back(control_message(PORT_OPEN, open, &[]));
                }
                // The guest opening or closing its end, and anything unknown: nothing
                // for the host to do.
                _ => {}
            }
        }
    }

    /// Moves pending bytes (port) or messages (control) into the guest's buffers.
    fn fill_receive(&mut self, index: usize) {
        let mut used = false;
        loop {
            let nothing = if index == CONTROL_RECEIVE {
                self.control_out.is_empty()
            } else {
                self.to_guest.is_empty()
            };
            if nothing {
                break;
            }
            let queue = &mut self.queues[index];
            let Some(chain) = queue.queue.pop_descriptor_chain(&self.memory) else {
                break;
            };
            let head = chain.head_index();
            let Ok(mut writer) = chain.writer(&self.memory) else {
                let _ = queue.queue.add_used(&self.memory, head, 0);
                used = true;
                continue;
            };
            let written = if index == CONTROL_RECEIVE {
                let message = self.control_out.pop_front().unwrap_or_default();
                writer
                    .write_all(&message)
                    .map(|()| message.len())
                    .unwrap_or(0)
            } else {
                let room = writer.available_bytes().min(self.to_guest.len());
                let bytes: Vec<u8> = self.to_guest.drain(..room).collect();
                writer.write_all(&bytes).map(|()| bytes.len()).unwrap_or(0)
            };
            let _ = queue.queue.add_used(&self.memory, head, written as u32);
            used = true;
        }
        if used {
            self.notify(index);
        }
    }

    /// Sends what the guest wrote to the host, while the host is connected.
    fn drain_transmit(&mut self) {
        if self.socket.is_none() {
            return;
        }
        let mut used = false;
        let mut lost = false;
        let queue = &mut self.queues[PORT_TRANSMIT];
        while let Some(chain) = queue.queue.pop_descriptor_chain(&self.memory) {
            let head = chain.head_index();
            let mut bytes = Vec::new();
            if let Ok(mut reader) = chain.reader(&self.memory) {
                let _ = reader.read_to_end(&mut bytes);
            }
            if let Some(socket) = self.socket.as_mut() {
                if socket.write_all(&bytes).is_err() {
                    lost = true;
                }
            }
            let _ = queue.queue.add_used(&self.memory, head, 0);
            used = true;
            if lost {
                break;
            }
        }
        if used {
            self.notify(PORT_TRANSMIT);
        }
        if lost {
            self.socket = None;
            self.host_connection_changed();
        }
    }

    fn notify(&mut self, index: usize) {
        let queue = &mut self.queues[index];
        if queue.queue.needs_notification(&self.memory).unwrap_or(true) {
            self.interrupt.queue(queue.vector);
        }
    }
}
