//! The QEMU command line for a [`VmSpec`].

use std::path::Path;

use berth_agent_proto::PORT_NAME;
use berth_vm::{Accelerator, DiskFormat, DiskSpec, MemoryBacking, NicSpec, VmSpec};

/// Kernel command line: serial console, quiet, power off on panic, and no probing of
/// hardware the VM does not have.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 quiet panic=-1 i8042.noaux i8042.nomux i8042.nopnp 8250.nr_uarts=1 random.trust_cpu=on";

/// Builds QEMU's arguments (without the binary).
pub fn qemu_arguments(
    spec: &VmSpec,
    accelerator: Accelerator,
    agent_socket: &Path,
    qmp_socket: &Path,
) -> Vec<String> {
    let cpu = match accelerator {
        Accelerator::Kvm => "host",
        Accelerator::Tcg => "max",
    };
    let (machine_memory, memory_object) = match &spec.memory {
        MemoryBacking::Anonymous => (String::new(), None),
        MemoryBacking::SharedFile(path) | MemoryBacking::PrivateFile(path) => {
            let share = if matches!(spec.memory, MemoryBacking::SharedFile(_)) {
                "on"
            } else {
                "off"
            };
            (
                ",memory-backend=ram".to_owned(),
                Some(format!(
                    "memory-backend-file,id=ram,size={}M,mem-path={},share={share}",
                    spec.memory_mib,
                    escape_option(&path.display().to_string())
                )),
            )
        }
    };
    let mut args: Vec<String> = vec![
        "-name".into(),
        format!("berth-{},debug-threads=off", spec.name),
        "-machine".into(),
        format!("pc{machine_memory}"),
        "-accel".into(),
        accel_option(accelerator),
        "-cpu".into(),
        cpu.into(),
        "-smp".into(),
        spec.vcpus.to_string(),
        "-m".into(),
        spec.memory_mib.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-serial".into(),
        format!("file:{}", spec.run_dir.join("console.log").display()),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp_socket.display()),
    ];
    // A restored VM runs the kernel already in its memory: QEMU is not given one to
    // load, which spares each clone QEMU's copy of the kernel image (the size of the
    // bzImage, ~14 MiB for Debian's) and of the initramfs.
    if spec.restore_from.is_none() {
        args.extend([
            "-kernel".into(),
            spec.kernel.display().to_string(),
            "-initrd".into(),
            spec.initramfs.display().to_string(),
            "-append".into(),
            KERNEL_CMDLINE.into(),
        ]);
    }
    if let Some(object) = memory_object {
        args.push("-object".into());
        args.push(object);
    }
    if spec.restore_from.is_some() {
        args.push("-incoming".into());
        args.push("defer".into());
    }
    for (index, disk) in spec.disks.iter().enumerate() {
        if index == 0 && spec.restore_from.is_some() {
            args.extend(["-blockdev".into(), replaceable_root_blockdev(disk)]);
            args.push("-device".into());
            args.push(disk_device(disk, ROOT_NODE));
            continue;
        }
        let format = format_name(disk.format);
        args.push("-drive".into());
        args.push(format!(
            "file={},format={format},if=none,id=disk{index},cache=writeback,discard=unmap{}",
            escape_option(&disk.path.display().to_string()),
            if disk.read_only { ",readonly=on" } else { "" }
        ));
        args.push("-device".into());
        args.push(disk_device(disk, &format!("disk{index}")));
    }
    for nic in &spec.nics {
        let (netdev, device) = nic_options(nic);
        args.extend(["-netdev".into(), netdev, "-device".into(), device]);
    }
    // The balloon, in VMs with memory of their own: `docker update -m` of a running
    // container lowers (and raises back) what the guest may use; free page reporting
    // hands pages the guest frees back to the host. Not in templates and clones: QEMU
    // (7.2) gives discarded pages back by punching holes in a file-backed RAM's file even
    // when the mapping is private, and a clone's file is its template's, which every
    // other clone maps.
    if matches!(spec.memory, MemoryBacking::Anonymous) {
        args.extend([
            "-device".into(),
            "virtio-balloon-pci,id=balloon0,free-page-reporting=on".into(),
        ]);
    }
    args.extend([
        "-device".into(),
        "virtio-serial-pci".into(),
        "-chardev".into(),
        // `reconnect`: if the engine goes away while the VM runs, QEMU keeps trying the
        // socket every second, and the next engine to listen there takes the VM over.
        format!(
            "socket,id=agent,path={},reconnect=1",
            escape_option(&agent_socket.display().to_string())
        ),
        "-device".into(),
        format!("virtserialport,chardev=agent,name={PORT_NAME}"),
    ]);
    args
}

/// QEMU's ids for a NIC, from its slot.
pub fn nic_ids(nic: &NicSpec) -> (String, String) {
    (
        format!("net{}", nic.pci_slot),
        format!("nic{}", nic.pci_slot),
    )
}

/// The `-netdev` and `-device` option values of a NIC. The tap is opened by name from the
/// VM process's network namespace; QEMU runs no scripts.
///
/// `guest_announce=off`: QEMU 7.2 frees the device's announce timer when it loads a
/// snapshot in which no announcement is due, and then dereferences it on the device's
/// next reset, so a clone whose guest unbinds or resets its NIC (a container on `none`
/// gives its NIC up) killed its own QEMU with SIGSEGV. The announcement (gratuitous ARP
/// after a migration) is nothing Berth uses: a clone's agent gives its NIC its own
/// address and MAC.
pub fn nic_options(nic: &NicSpec) -> (String, String) {
    let (netdev_id, device_id) = nic_ids(nic);
    (
        format!(
            "tap,id={netdev_id},ifname={},script=no,downscript=no",
            escape_option(&nic.tap)
        ),
        format!(
            "virtio-net-pci,id={device_id},netdev={netdev_id},mac={},addr={:#04x},guest_announce=off",
            escape_option(&nic.mac),
            nic.pci_slot
        ),
    )
}

/// The accelerator. TCG's translation cache is capped: QEMU's default reserves up to 1 GiB
/// per VM and a cold boot fills much of what it touches; measured with `berth bench
/// clone`, 64 MiB kept boots and clones as fast as the default while cold-booted VMs used
/// less memory, and 8 or 16 MiB made both slower (re-translation).
fn accel_option(accelerator: Accelerator) -> String {
    match accelerator {
        Accelerator::Kvm => "kvm".into(),
        Accelerator::Tcg => format!("tcg,tb-size={TCG_TRANSLATION_CACHE_MIB}"),
    }
}

/// TCG translation cache per VM, in MiB.
pub const TCG_TRANSLATION_CACHE_MIB: u32 = 64;

/// QEMU option values escape a comma by doubling it.
fn escape_option(value: &str) -> String {
    value.replace(',', ",,")
}

/// A disk serial as QEMU gets it: letters, digits and `-`, at most 20 (the virtio-blk
/// ID field's size), so that it needs no escaping.
pub(crate) fn clean_serial(serial: &str) -> String {
    serial
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(20)
        .collect()
}

/// The node a clone's first disk (`/dev/vda`) is attached through: a `raw` node whose
/// `file` child is the disk's format node. `blockdev-reopen` can point it at another
/// disk while the VM runs (QEMU >= 6.1), which is how a VM restored ahead of demand
/// takes a container's root filesystem (see [`crate::process`]); a virtio-blk device
/// cannot change its own drive once realized.
pub(crate) const ROOT_NODE: &str = "root";

/// The `-blockdev` of a clone's first disk: [`ROOT_NODE`] over the disk's format node
/// over its file, with `-drive`'s settings for the other disks (writeback cache,
/// discards passed down).
fn replaceable_root_blockdev(disk: &DiskSpec) -> String {
    format!(
        "driver=raw,node-name={ROOT_NODE},discard=unmap,read-only={},file.driver={},file.node-name={ROOT_NODE}-format0,file.discard=unmap,file.file.driver=file,file.file.filename={},file.file.discard=unmap",
        if disk.read_only { "on" } else { "off" },
        format_name(disk.format),
        escape_option(&disk.path.display().to_string()),
    )
}

/// QEMU's name of a disk format.
pub(crate) fn format_name(format: DiskFormat) -> &'static str {
    match format {
        DiskFormat::Raw => "raw",
        DiskFormat::Qcow2 => "qcow2",
    }
}

/// What a virtio-blk disk does on a failed read or write: tell the guest.
pub(crate) const DISK_ERROR_POLICY: &str = "werror=report,rerror=report";

/// The `-device` options of a virtio-blk disk whose drive is `drive`. A failed read or
/// write (a full disk on the host above all) is reported to the guest as an I/O error,
/// as the built-in VMM does: QEMU's default stops the whole VM on ENOSPC, and a stopped
/// VM's agent answers nothing, so a `docker run` would wait out its timeout.
pub(crate) fn disk_device(disk: &DiskSpec, drive: &str) -> String {
    let mut device = format!("virtio-blk-pci,drive={drive},{DISK_ERROR_POLICY}");
    if let Some(serial) = disk.serial.as_deref().map(clean_serial) {
        device.push_str(&format!(",serial={serial}"));
    }
    if let Some(slot) = disk.pci_slot {
        device.push_str(&format!(",addr={slot:#04x}"));
    }
    device
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn command_line_has_devices_and_escapes_paths() {
        let spec = VmSpec {
            name: "abc".into(),
            vcpus: 2,
            memory_mib: 512,
            kernel: "/k/vmlinuz".into(),
            initramfs: "/k/initrd".into(),
            disks: vec![DiskSpec::new(
                PathBuf::from("/d/a,b.qcow2"),
                DiskFormat::Qcow2,
            )],
            run_dir: "/run/x".into(),
            memory: MemoryBacking::Anonymous,
            restore_from: None,
            nics: vec![NicSpec {
                tap: "bt0123456789ab0".into(),
                mac: "02:42:ac:11:00:02".into(),
                pci_slot: 8,
            }],
            netns: None,
        };
        let args = qemu_arguments(
            &spec,
            Accelerator::Tcg,
            Path::new("/run/x/agent.sock"),
            Path::new("/run/x/qmp.sock"),
        );
        let joined = args.join(" ");
        assert!(joined.contains("-machine pc -accel tcg,tb-size=64 -cpu max -smp 2 -m 512"));
        assert!(joined.contains("file=/d/a,,b.qcow2,format=qcow2"));
        assert!(joined.contains("virtserialport,chardev=agent,name=berth.agent"));
        assert!(joined.contains(
            "-netdev tap,id=net8,ifname=bt0123456789ab0,script=no,downscript=no -device virtio-net-pci,id=nic8,netdev=net8,mac=02:42:ac:11:00:02,addr=0x08,guest_announce=off"
        ));
        let kvm =
            qemu_arguments(&spec, Accelerator::Kvm, Path::new("/a"), Path::new("/q")).join(" ");
        assert!(kvm.contains("-accel kvm -cpu host"));

        let clone = VmSpec {
            memory: MemoryBacking::PrivateFile("/t/memory".into()),
            restore_from: Some("/t/state".into()),
            ..spec.clone()
        };
        let joined =
            qemu_arguments(&clone, Accelerator::Tcg, Path::new("/a"), Path::new("/q")).join(" ");
        assert!(joined.contains("-machine pc,memory-backend=ram -accel tcg"));
        assert!(
            joined.contains("memory-backend-file,id=ram,size=512M,mem-path=/t/memory,share=off")
        );
        assert!(joined.contains("-incoming defer"));
        assert!(joined.contains(
            "-blockdev driver=raw,node-name=root,discard=unmap,read-only=off,file.driver=qcow2,file.node-name=root-format0,file.discard=unmap,file.file.driver=file,file.file.filename=/d/a,,b.qcow2,file.file.discard=unmap -device virtio-blk-pci,drive=root,"
        ));
        assert!(!joined.contains("-drive"));
        assert!(!joined.contains("-kernel") && !joined.contains("-initrd"));
        let cold = qemu_arguments(&spec, Accelerator::Tcg, Path::new("/a"), Path::new("/q"));
        assert!(cold.windows(2).any(|pair| pair[0] == "-kernel"));
    }
}
