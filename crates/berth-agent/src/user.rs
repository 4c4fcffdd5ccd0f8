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
    /// Every group the process is in: its primary group, the groups /etc/group lists
    /// the user in, and the ones asked for (`--group-add`), once each.
    pub groups: Vec<u32>,
}

fn find_entry(file: &str, name_or_id: &str) -> Option<Vec<String>> {
    let text = fs::read_to_string(file).ok()?;
    text.lines()
        .map(|line| line.split(':').map(str::to_owned).collect::<Vec<_>>())
        .find(|fields| fields.len() >= 3 && (fields[0] == name_or_id || fields[2] == name_or_id))
}

/// A group by name or number: its gid (a number that no entry names is taken as is).
fn group_id(root: &str, group: &str) -> Result<u32, String> {
    match (
        find_entry(&format!("{root}/etc/group"), group),
        group.parse::<u32>(),
    ) {
        (Some(fields), _) => fields[2]
            .parse()
            .map_err(|_| format!("bad gid for group {group}")),
        (None, Ok(gid)) => Ok(gid),
        (None, Err(_)) => Err(format!(
            "unable to find group {group}: no matching entries in group file"
        )),
    }
}

/// The gids of the groups whose member list (the fourth field) names `user`.
fn member_groups(root: &str, user: &str) -> Vec<u32> {
    let Ok(text) = fs::read_to_string(format!("{root}/etc/group")) else {
        return Vec::new();
    };
    text.lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .filter(|fields| fields.len() >= 4 && fields[3].split(',').any(|m| m == user))
        .filter_map(|fields| fields[2].parse().ok())
        .collect()
}

/// Resolves `spec` (`""`, `user`, `uid`, `user:group`, `uid:gid`) with the files under
/// `root`, and the groups the process is in (see [`Identity::groups`]).
pub fn resolve(root: &str, spec: &str, extra_groups: &[String]) -> Result<Identity, String> {
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
        gid = group_id(root, group)?;
    }
    let mut groups = vec![gid];
    if let Some(fields) = &passwd {
        groups.extend(member_groups(root, &fields[0]));
    }
    for extra in extra_groups {
        groups.push(group_id(root, extra)?);
    }
    let mut seen = std::collections::HashSet::new();
    groups.retain(|g| seen.insert(*g));
    Ok(Identity {
        uid,
        gid,
        home,
        groups,
    })
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
            "root:x:0:\nweb:x:34:\nstaff:x:50:www,other\naudio:x:29:\n",
        )
        .unwrap();
        let root = root.to_str().unwrap();
        assert_eq!(
            resolve(root, "", &[]).unwrap(),
            Identity {
                uid: 0,
                gid: 0,
                home: "/root".into(),
                groups: vec![0],
            }
        );
        // The user's primary group, then the groups that list it.
        assert_eq!(
            resolve(root, "www", &[]).unwrap(),
            Identity {
                uid: 33,
                gid: 34,
                home: "/var/www".into(),
                groups: vec![34, 50],
            }
        );
        assert_eq!(resolve(root, "www:staff", &[]).unwrap().gid, 50);
        assert_eq!(resolve(root, "www:staff", &[]).unwrap().groups, vec![50]);
        // --group-add: names and numbers.
        let added = ["audio".to_owned(), "4321".to_owned(), "staff".to_owned()];
        assert_eq!(
            resolve(root, "1000:1000", &added).unwrap(),
            Identity {
                uid: 1000,
                gid: 1000,
                home: "/".into(),
                groups: vec![1000, 29, 4321, 50],
            }
        );
        assert!(resolve(root, "", &["no-such-group".to_owned()]).is_err());
        assert!(resolve(root, "nobody-here", &[]).is_err());
        assert!(resolve(root, "www:nogroup", &[]).is_err());
    }
}
