//! A daemon stopped (SIGTERM) while it is still building its VM template leaves no VM
//! process behind, whenever the stop comes: the template's VM goes with the abandoned
//! build. (A daemon killed outright leaves it to the next daemon on the same exec root,
//! which kills VM processes nothing owns: tests/live_restore.rs.)

mod common;

use std::time::Duration;

use common::{eventually_within, scratch, Daemon};

#[test]
fn a_daemon_stopped_while_building_its_template_leaves_no_vm() {
    // From the moment the template's VM process appears, stops at growing delays: while
    // it starts, connects to the daemon, boots its guest.
    for delay_ms in [0u64, 100, 200, 300, 500, 800, 1200, 2000] {
        let root = scratch().join(format!("template-stop-{delay_ms}"));
        let templates = root.with_extension("run").join("templates");
        let daemon = Daemon::start(&root);
        let appeared = eventually_within(Duration::from_secs(60), || {
            !berth_vm::process::vm_processes_under(&templates).is_empty()
        });
        assert!(appeared, "the template's VM never started");
        std::thread::sleep(Duration::from_millis(delay_ms));
        daemon.stop();
        let gone = eventually_within(Duration::from_secs(10), || {
            berth_vm::process::vm_processes_under(&templates).is_empty()
        });
        let left = berth_vm::process::vm_processes_under(&templates);
        for pid in &left {
            berth_vm::process::kill_process(*pid);
        }
        assert!(
            gone,
            "stopped {delay_ms} ms after its template VM appeared, the daemon left {left:?}"
        );
    }
}
