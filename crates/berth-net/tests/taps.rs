//! Taps made, attached, renamed and deleted in a network namespace this test makes (root
//! is needed, as for Berth itself), each checked with `ip`: what a container's start does
//! to its tap, now without running `ip` itself.

use std::net::Ipv4Addr;
use std::process::Command;

use berth_net::{links, Namespace};

struct TestNamespace(Namespace);

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = Namespace::delete(self.0.name());
    }
}

/// `ip -d link show dev NAME` in the namespace, or `None` if there is no such link.
fn shown(namespace: &Namespace, name: &str) -> Option<String> {
    let output = Command::new("ip")
        .args(["-n", namespace.name(), "-d", "link", "show", "dev", name])
        .output()
        .expect("ip runs");
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn taps_are_made_attached_renamed_and_deleted() {
    let namespace = TestNamespace(
        Namespace::ensure(&format!("berth-tap-test-{}", std::process::id())).unwrap(),
    );
    let ns = &namespace.0;
    links::ensure_bridge(ns, "br-test", Ipv4Addr::new(10, 250, 0, 1), 24).unwrap();

    // Made: a persistent tap with virtio-net headers, down, attached to nothing.
    links::create_tap(ns, "bttest0").unwrap();
    let tap = shown(ns, "bttest0").expect("the tap exists");
    assert!(tap.contains("tun type tap"), "{tap}");
    assert!(
        tap.contains("vnet_hdr on") && tap.contains("persist on"),
        "{tap}"
    );
    assert!(!tap.contains("master") && !tap.contains(",UP"), "{tap}");

    // Attached and up; attaching again is no error.
    links::attach_tap(ns, "bttest0", "br-test").unwrap();
    links::attach_tap(ns, "bttest0", "br-test").unwrap();
    let tap = shown(ns, "bttest0").unwrap();
    assert!(
        tap.contains("master br-test") && tap.contains(",UP"),
        "{tap}"
    );

    // Made again under the same name: a new tap, not the attached one.
    links::create_tap(ns, "bttest0").unwrap();
    let tap = shown(ns, "bttest0").unwrap();
    assert!(!tap.contains("master"), "{tap}");

    // Renamed over an existing tap (a spare's tap taking a container's name).
    links::create_tap(ns, "btspare0").unwrap();
    links::attach_tap(ns, "bttest0", "br-test").unwrap();
    links::rename_tap(ns, "btspare0", "bttest0").unwrap();
    assert!(shown(ns, "btspare0").is_none(), "the spare's name is gone");
    let tap = shown(ns, "bttest0").expect("the renamed tap");
    assert!(!tap.contains("master"), "the old tap went: {tap}");
    assert_eq!(
        links::links_with_prefix(ns, "btt").unwrap(),
        vec!["bttest0".to_owned()]
    );

    // Deleted: a tap, then a link that is no tap (the bridge), then one that is gone.
    links::delete_link(ns, "bttest0").unwrap();
    assert!(shown(ns, "bttest0").is_none());
    links::delete_link(ns, "br-test").unwrap();
    assert!(shown(ns, "br-test").is_none());
    links::delete_link(ns, "br-test").unwrap();
    assert!(links::links_with_prefix(ns, "bt").unwrap().is_empty());

    // Bad names are refused before anything is done.
    assert!(links::create_tap(ns, "a-name-that-is-too-long").is_err());
    assert!(links::rename_tap(ns, "bttest0", "bad/name").is_err());
}
