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
