//! Guest RAM: mapped into this process and registered with KVM, one slot per range of
//! [`crate::layout::ram_ranges`].

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout::ram_ranges;
use crate::VmmError;

/// Guest RAM of `memory_mib`, anonymous and zeroed.
pub fn create(memory_mib: u32) -> Result<GuestMemoryMmap, VmmError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(u64::from(memory_mib) << 20)
        .into_iter()
        .map(|(start, size)| (GuestAddress(start), size as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| VmmError::Memory(e.to_string()))
}

/// Guest RAM of `memory_mib` in `path`: each RAM range at its guest address's offset in
/// the file (the gap is a hole). `shared`: the file is created or resized and the guest
/// writes into it (a template). Otherwise it must exist with the right size and is
/// mapped private, copy-on-write (a clone reads its template's pages and owns only the
/// ones it writes).
pub fn create_in_file(
    memory_mib: u32,
    path: &std::path::Path,
    shared: bool,
) -> Result<GuestMemoryMmap, VmmError> {
    let ranges = ram_ranges(u64::from(memory_mib) << 20);
    let file_size = ranges.last().map(|(start, size)| start + size).unwrap_or(0);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(shared)
        .create(shared)
        .truncate(false)
        .open(path)
        .map_err(VmmError::io(path))?;
    if shared {
        file.set_len(file_size).map_err(VmmError::io(path))?;
    } else {
        let length = file.metadata().map_err(VmmError::io(path))?.len();
        if length != file_size {
            return Err(VmmError::Memory(format!(
                "{} holds {length} bytes, the VM's RAM needs {file_size}",
                path.display()
            )));
        }
    }
    let flags = if shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    } | libc::MAP_NORESERVE;
    let mut regions = Vec::new();
    for (start, size) in ranges {
        let handle = file.try_clone().map_err(VmmError::io(path))?;
        let mapping = vm_memory::MmapRegion::build(
            Some(vm_memory::FileOffset::new(handle, start)),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
        )
        .map_err(|e| VmmError::Memory(e.to_string()))?;
        let region = vm_memory::GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or_else(|| VmmError::Memory("a RAM range overflows".into()))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| VmmError::Memory(e.to_string()))
}

/// Gives KVM every region of `memory`.
pub fn register(vm: &VmFd, memory: &GuestMemoryMmap) -> Result<(), VmmError> {
    for (slot, region) in memory.iter().enumerate() {
        let host_address = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| VmmError::Memory(e.to_string()))?;
        let descriptor = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host_address as u64,
        };
        // SAFETY: the region is a live mapping of exactly `memory_size` bytes owned by
        // `memory`, which the VM keeps for as long as the VM file descriptor exists.
        unsafe { vm.set_user_memory_region(descriptor) }.map_err(VmmError::kvm("map memory"))?;
    }
    Ok(())
}
