//! Kernel module dependency order, read from the modules themselves.
//!
//! Debian's package ships no `modules.dep`, so the `depends=` entries of each module's
//! `.modinfo` section are read directly. `.modinfo` is a sequence of NUL-terminated
//! `key=value` strings; the scan below looks for the `depends=` key at a string boundary,
//! which is all `modinfo` itself does with that section (no ELF crate is needed for it).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::GuestError;

/// Canonical module name: dashes and underscores are the same to the kernel.
pub fn canonical_name(name: &str) -> String {
    name.replace('-', "_")
}

/// Every `*.ko` under `dir`, by canonical name.
pub fn index_modules(dir: &Path) -> Result<HashMap<String, PathBuf>, GuestError> {
    let mut index = HashMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in fs::read_dir(&current)
            .map_err(GuestError::io(&current))?
            .flatten()
        {
            let path = entry.path();
            let file_type = entry.file_type().map_err(GuestError::io(&path))?;
            if file_type.is_dir() {
                pending.push(path);
            } else if let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                index.insert(canonical_name(name), path);
            }
        }
    }
    Ok(index)
}

/// The `depends=` list of a module image.
pub fn module_depends(image: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(start) = image.windows(KEY.len()).position(|window| window == KEY) else {
        return Vec::new();
    };
    let value = &image[start + KEY.len()..];
    let end = value
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|name| !name.is_empty())
        .map(canonical_name)
        .collect()
}

/// The modules `wanted` and everything they depend on, dependencies first.
pub fn resolve_load_order(dir: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>, GuestError> {
    let index = index_modules(dir)?;
    let mut order: Vec<String> = Vec::new();
    let mut visiting: Vec<String> = Vec::new();
    fn visit(
        name: &str,
        index: &HashMap<String, PathBuf>,
        order: &mut Vec<String>,
        visiting: &mut Vec<String>,
    ) -> Result<(), GuestError> {
        if order.iter().any(|done| done == name) {
            return Ok(());
        }
        if visiting.iter().any(|open| open == name) {
            return Err(GuestError::Module(format!(
                "dependency cycle through {name}"
            )));
        }
        let path = index
            .get(name)
            .ok_or_else(|| GuestError::Module(format!("module {name} not found")))?;
        let image = fs::read(path).map_err(GuestError::io(path))?;
        visiting.push(name.to_owned());
        for dependency in module_depends(&image) {
            visit(&dependency, index, order, visiting)?;
        }
        visiting.pop();
        order.push(name.to_owned());
        Ok(())
    }
    for name in wanted {
        visit(&canonical_name(name), &index, &mut order, &mut visiting)?;
    }
    Ok(order.iter().map(|name| index[name].clone()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_module(depends: &str) -> Vec<u8> {
        let mut image = b"\x7fELF....junk\0license=GPL\0".to_vec();
        image.extend_from_slice(format!("depends={depends}\0name=x\0").as_bytes());
        image
    }

    #[test]
    fn reads_depends() {
        assert_eq!(
            module_depends(&fake_module("virtio,virtio_ring")),
            vec!["virtio", "virtio_ring"]
        );
        assert!(module_depends(&fake_module("")).is_empty());
        assert!(module_depends(b"no modinfo here").is_empty());
    }

    #[test]
    fn orders_dependencies_first() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/virtio.ko"), fake_module("")).unwrap();
        fs::write(dir.path().join("a/virtio_ring.ko"), fake_module("virtio")).unwrap();
        fs::write(
            dir.path().join("a/b/virtio-blk.ko"),
            fake_module("virtio,virtio_ring"),
        )
        .unwrap();
        let order = resolve_load_order(dir.path(), &["virtio_blk"]).unwrap();
        let names: Vec<_> = order
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, vec!["virtio.ko", "virtio_ring.ko", "virtio-blk.ko"]);
    }

    #[test]
    fn missing_and_cyclic_modules_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.ko"), fake_module("b")).unwrap();
        fs::write(dir.path().join("b.ko"), fake_module("a")).unwrap();
        assert!(resolve_load_order(dir.path(), &["a"]).is_err());
        assert!(resolve_load_order(dir.path(), &["zzz"]).is_err());
    }
}
