//! Resolving `user[:group]` against the container's /etc/passwd and /etc/group.
//!
//! Written by hand because the container's files, not the agent's own NSS, are the
//! source of truth, and a static binary must not load NSS modules.

use std::fs;

/// The identity a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

fn find_entry(file: &str, name_or_id: &str) -> Option<Vec<String>> {
    let text = fs::read_to_string(file).ok()?;
    text.lines()
        .map(|line| line.split(':').map(str::to_owned).collect::<Vec<_>>())
        .find(|fields| fields.len() >= 3 && (fields[0] == name_or_id || fields[2] == name_or_id))
}

/// Resolves `spec` (`""`, `user`, `uid`, `user:group`, `uid:gid`) with the files under `root`.
pub fn resolve(root: &str, spec: &str) -> Result<Identity, String> {
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let passwd = find_entry(&format!("{root}/etc/passwd"), user);
    let (uid, mut gid, home) = match (&passwd, user.parse::<u32>()) {
        (Some(fields), _) => (
            fields[2]
                .parse()
                .map_err(|_| format!("bad uid for user {user} in /etc/passwd"))?,
            fields.get(3).and_then(|g| g.parse().ok()).unwrap_or(0),
            fields.get(5).cloned().unwrap_or_else(|| "/".into()),
        ),
        (None, Ok(uid)) => (uid, 0, "/".to_owned()),
        (None, Err(_)) => {
            return Err(format!(
                "unable to find user {user}: no matching entries in passwd file"
            ))
        }
    };
    if let Some(group) = group {
        gid = match (
            find_entry(&format!("{root}/etc/group"), group),
            group.parse::<u32>(),
        ) {
            (Some(fields), _) => fields[2]
                .parse()
                .map_err(|_| format!("bad gid for group {group}"))?,
            (None, Ok(gid)) => gid,
            (None, Err(_)) => {
                return Err(format!(
                    "unable to find group {group}: no matching entries in group file"
                ))
            }
        };
    }
    Ok(Identity { uid, gid, home })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_numbers_and_groups() {
        let root = std::env::temp_dir().join(format!("berth-user-test-{}", std::process::id()));
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34:www:/var/www:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            root.join("etc/group"),
            "root:x:0:\nweb:x:34:\nstaff:x:50:\n",
        )
        .unwrap();
        let root = root.to_str().unwrap();
        assert_eq!(
            resolve(root, "").unwrap(),
            Identity {
                uid: 0,
                gid: 0,
                home: "/root".into()
            }
        );
        assert_eq!(
            resolve(root, "www").unwrap(),
            Identity {
                uid: 33,
                gid: 34,
                home: "/var/www".into()
            }
        );
        assert_eq!(resolve(root, "www:staff").unwrap().gid, 50);
        assert_eq!(
            resolve(root, "1000:1000").unwrap(),
            Identity {
                uid: 1000,
                gid: 1000,
                home: "/".into()
            }
        );
        assert!(resolve(root, "nobody-here").is_err());
        assert!(resolve(root, "www:nogroup").is_err());
    }
}
