//! The web console and `/metrics` (`berth daemon --console ADDRESS`): headless Chromium
//! (Debian's chromium, driven over the DevTools protocol) signs in with the token, finds
//! a running container's VM with its memory figures, stops it from the page (accepting
//! the confirmation) and sees the page update itself, at desktop and phone width;
//! screenshots are kept under `target/console-screenshots/`. `/metrics` is read by
//! Prometheus's own OpenMetrics parser (python3-prometheus-client) and its values
//! checked against `docker ps` and `docker stats`. Client certificates of the daemon's
//! CA sign in without the token; others, and no credentials, get nothing.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
use chromiumoxide::cdp::browser_protocol::page::{
    CaptureScreenshotFormat, EventJavascriptDialogOpening, HandleJavaScriptDialogParams,
};
use chromiumoxide::page::ScreenshotParams;
use chromiumoxide::Page;
use common::{busybox_archive, eventually, free_port, make_ca_and_certificates, Daemon};
use futures_util::StreamExt;

const TOKEN: &str = "console-test-token-3f9a";

/// A daemon serving the console on a free loopback port, with TLS from `certificates`
/// (made by [`make_ca_and_certificates`] with the name `berth`) when given.
fn daemon_with_console(dir: &Path, certificates: bool) -> (Daemon, u16) {
    let port = free_port();
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let address = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--console".to_owned(),
        address,
        "--console-token-file".to_owned(),
        token_file.display().to_string(),
    ];
    if certificates {
        for (flag, file) in [
            ("--tlscert", "berth-server.pem"),
            ("--tlskey", "berth-server-key.pem"),
            ("--tlscacert", "berth-ca.pem"),
        ] {
            args.push(flag.to_owned());
            args.push(dir.join(file).display().to_string());
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let daemon = Daemon::start_with(&dir.join("root"), &args);
    daemon.docker_ok(&["load", "-i", busybox_archive().to_str().unwrap()]);
    (daemon, port)
}

/// curl against the console: `(status, body)`.
fn curl(url: &str, extra: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args([
            "-s",
            "-k",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--max-time",
            "20",
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// `/metrics` read by Prometheus's OpenMetrics parser: `name{labels}` → value.
fn scrape(port: u16) -> HashMap<String, f64> {
    let (status, body) = curl(
        &format!("http://127.0.0.1:{port}/metrics"),
        &["-H", &format!("Authorization: Bearer {TOKEN}")],
    );
    assert_eq!(status, 200, "{body}");
    let parser = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
        print(f"{sample.name}{{{labels}}} {sample.value!r}")
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", parser])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (with python3-prometheus-client: scripts/setup.sh)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "Prometheus's parser refused /metrics: {}\n{body}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The value of the one series named `name` whose labels include every pair of `with`.
fn value(metrics: &HashMap<String, f64>, name: &str, with: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = metrics
        .iter()
        .filter(|(key, _)| {
            key.strip_prefix(name).is_some_and(|rest| {
                rest.starts_with('{')
                    && with
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
        })
        .map(|(_, value)| *value)
        .collect();
    assert_eq!(found.len(), 1, "{name} {with:?} in {metrics:#?}");
    found[0]
}

/// `12.3MiB` / `1.5GB` / `4kB` (docker's units) in bytes.
fn docker_bytes(text: &str) -> f64 {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().unwrap();
    number
        * match unit {
            "B" | "" => 1.0,
            "kB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            other => panic!("unit {other} in {text}"),
        }
}

#[test]
fn metrics_parse_and_agree_with_docker_ps_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, port) = daemon_with_console(dir.path(), false);
    daemon.docker_ok(&[
        "run",
        "-d",
        "--name",
        "writer",
        "busybox",
        "sh",
        "-c",
        "dd if=/dev/zero of=/data bs=1M count=8 && sync && sleep 600",
    ]);
    daemon.docker_ok(&["run", "--name", "done", "busybox", "true"]);
    daemon.docker_ok(&["create", "--name", "idle", "busybox", "true"]);

    // No credentials, or the wrong token: nothing.
    let url = format!("http://127.0.0.1:{port}/metrics");
    assert_eq!(curl(&url, &[]).0, 401);
    assert_eq!(
        curl(&url, &["-H", "Authorization: Bearer not-the-token"]).0,
        401
    );

    eventually("the writer's 8 MiB reach its disk", || {
        let metrics = scrape(port);
        value(
            &metrics,
            "berth_container_disk_written_bytes_total",
            &[("name", "writer")],
        ) >= 8.0 * 1024.0 * 1024.0
    });
    let stats_before = daemon.docker_ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.MemUsage}}|{{.BlockIO}}",
        "writer",
    ]);
    let metrics = scrape(port);
    let stats_after = daemon.docker_ok(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.MemUsage}}|{{.BlockIO}}",
        "writer",
    ]);

    // Containers by state, as docker ps counts them.
    for (state, filter) in [
        ("running", "status=running"),
        ("exited", "status=exited"),
        ("created", "status=created"),
    ] {
        let listed = daemon
            .docker_ok(&["ps", "-aq", "--filter", filter])
            .lines()
            .count();
        assert_eq!(
            value(&metrics, "berth_containers", &[("state", state)]),
            listed as f64,
            "{state}"
        );
    }
    // The running container's VM: labelled as docker ps shows it.
    let short = daemon.docker_ok(&["ps", "-q", "--filter", "name=writer"]);
    let labels = [
        ("id", short.as_str()),
        ("name", "writer"),
        ("image", "busybox"),
    ];
    assert!(value(&metrics, "berth_container_cpu_seconds_total", &labels) > 0.0);
    let private = value(&metrics, "berth_container_memory_private_bytes", &labels);
    assert!(private > 1024.0 * 1024.0, "{private}");
    // Disk bytes written lie between two docker stats read around the scrape (decimal
    // units, rounded to three figures: 1% either way).
    let written =
        |stats: &str| docker_bytes(stats.split('|').nth(1).unwrap().split('/').nth(1).unwrap());
    let disk = value(
        &metrics,
        "berth_container_disk_written_bytes_total",
        &labels,
    );
    assert!(
        disk >= written(&stats_before) * 0.99 && disk <= written(&stats_after) * 1.01,
        "{disk} against {stats_before} .. {stats_after}"
    );
    // docker stats' memory usage is the VM's private memory (as Berth reports it).
    let used =
        |stats: &str| docker_bytes(stats.split('|').next().unwrap().split('/').next().unwrap());
    let (low, high) = (
        used(&stats_before).min(used(&stats_after)),
        used(&stats_before).max(used(&stats_after)),
    );
    assert!(
        private >= low * 0.9 && private <= high * 1.1,
        "private {private} against docker stats {stats_before} .. {stats_after}"
    );
    // The engine's own: three starts (two clones and no cold boot), one template built,
    // API requests by route.
    assert_eq!(
        value(
            &metrics,
            "berth_container_start_seconds_count",
            &[("kind", "clone")]
        ),
        2.0
    );
    assert!(value(&metrics, "berth_template_builds_total", &[]) >= 1.0);
    assert!(
        value(
            &metrics,
            "berth_api_requests_total",
            &[("path", "/containers/create"), ("status", "201")]
        ) >= 3.0
    );
}

#[test]
fn every_action_works_over_http_and_cross_site_posts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, port) = daemon_with_console(dir.path(), false);
    daemon.docker_ok(&["run", "-d", "--name", "target", "busybox", "sleep", "600"]);
    let act = |action: &str, headers: &[&str]| {
        let mut args = vec!["-X", "POST"];
        for header in headers {
            args.extend(["-H", header]);
        }
        curl(
            &format!("http://127.0.0.1:{port}/containers/target/{action}"),
            &args,
        )
    };
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let state = || daemon.docker_ok(&["inspect", "-f", "{{.State.Status}}", "target"]);
    // A signed-in browser session without htmx's header (a form from another site): no.
    let (status, body) = curl(
        &format!("http://127.0.0.1:{port}/login"),
        &["-d", &format!("token={TOKEN}"), "-D", "-"],
    );
    assert_eq!(status, 303, "{body}");
    let cookie = body
        .lines()
        .find_map(|line| line.strip_prefix("set-cookie: "))
        .and_then(|value| value.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let cookie_header = format!("Cookie: {cookie}");
    assert_eq!(act("stop", &[&cookie_header]).0, 403);
    assert_eq!(act("stop", &[]).0, 401);
    assert_eq!(state(), "running");
    // With the page's header, or the bearer token, each action does what it says.
    for (action, headers, expected) in [
        (
            "pause",
            vec![cookie_header.as_str(), "HX-Request: true"],
            "paused",
        ),
        ("unpause", vec![bearer.as_str()], "running"),
        ("restart", vec![bearer.as_str()], "running"),
        ("kill", vec![bearer.as_str()], "exited"),
        ("start", vec![bearer.as_str()], "running"),
        ("stop", vec![bearer.as_str()], "exited"),
    ] {
        let (status, body) = act(action, &headers);
        assert_eq!(status, 200, "{action}: {body}");
        assert!(!body.contains("failed"), "{action}: {body}");
        assert_eq!(state(), expected, "after {action}");
    }
    let (status, body) = act("explode", &[&bearer]);
    assert_eq!(status, 404, "{body}");
    let (status, _) = act("remove", &[&bearer]);
    assert_eq!(status, 200);
    assert!(
        !daemon.docker(&["inspect", "target"]).status.success(),
        "not removed"
    );
}

/// Writes a screenshot of `page` to `target/console-screenshots/NAME.png`.
async fn screenshot(page: &Page, name: &str) {
    let png = page
        .screenshot(
            ScreenshotParams::builder()
                .format(CaptureScreenshotFormat::Png)
                .full_page(true)
                .build(),
        )
        .await
        .expect("a screenshot");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// The text of the first element `selector` matches, or "" if none does yet.
async fn text_of(page: &Page, selector: &str) -> String {
    let script = format!("(document.querySelector({selector:?}) || {{ innerText: '' }}).innerText");
    match page.evaluate(script).await {
        Ok(result) => result.into_value::<String>().unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Whether `script` evaluates to true in `page`.
async fn holds(page: &Page, script: &str) -> bool {
    match page.evaluate(script.to_owned()).await {
        Ok(result) => result.into_value::<bool>().unwrap_or(false),
        Err(_) => false,
    }
}

/// Polls `test` for up to 60 s (a bound on a wait, not a measure of speed).
async fn until<F, Fut>(what: &str, test: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if test().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("never: {what}");
}

/// A blocking call (the docker CLI, curl) off the browser's runtime threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_container_vms_and_stops_one_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    // On the test's own thread: the daemon dies with the thread that started it.
    make_ca_and_certificates(dir.path(), "berth");
    make_ca_and_certificates(dir.path(), "other");
    let (daemon, port) = daemon_with_console(dir.path(), true);
    daemon.docker_ok(&["run", "-d", "--name", "web", "busybox", "sleep", "600"]);
    let daemon = Arc::new(daemon);
    let base = format!("https://127.0.0.1:{port}");

    // Client certificates: the daemon's CA's sign in; another CA's cannot connect.
    let cert = |name: &str| {
        vec![
            "--cert".to_owned(),
            dir.path()
                .join(format!("{name}-client.pem"))
                .display()
                .to_string(),
            "--key".to_owned(),
            dir.path()
                .join(format!("{name}-client-key.pem"))
                .display()
                .to_string(),
        ]
    };
    let (berth_cert, other_cert) = (cert("berth"), cert("other"));
    let url = format!("{base}/");
    let (signed_in, other, anonymous) = blocking(move || {
        fn with(args: &[String]) -> Vec<&str> {
            args.iter().map(String::as_str).collect()
        }
        (
            curl(&url, &with(&berth_cert)),
            curl(&url, &with(&other_cert)).0,
            curl(&format!("{url}metrics"), &[]).0,
        )
    })
    .await;
    assert_eq!(signed_in.0, 200);
    assert!(signed_in.1.contains("data-name=\"web\""), "{}", signed_in.1);
    assert_eq!(other, 0, "another CA's certificate got in");
    assert_eq!(anonymous, 401);

    let config = BrowserConfig::builder()
        .chrome_executable("/usr/bin/chromium")
        .no_sandbox()
        .arg("--ignore-certificate-errors")
        .arg("--disable-dev-shm-usage")
        .arg("--disable-gpu")
        .window_size(1280, 1000)
        .viewport(None)
        .user_data_dir(dir.path().join("chromium"))
        .request_timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let (mut browser, mut handler) = Browser::launch(config)
        .await
        .expect("chromium (scripts/setup.sh installs Debian's)");
    let driver = tokio::spawn(async move { while handler.next().await.is_some() {} });
    let page = Arc::new(browser.new_page("about:blank").await.unwrap());
    // The confirmation of an action: remember it, accept it.
    let confirmations = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut dialogs = page
        .event_listener::<EventJavascriptDialogOpening>()
        .await
        .unwrap();
    let answering = tokio::spawn({
        let (page, confirmations) = (page.clone(), confirmations.clone());
        async move {
            while let Some(dialog) = dialogs.next().await {
                confirmations.lock().unwrap().push(dialog.message.clone());
                let _ = page.execute(HandleJavaScriptDialogParams::new(true)).await;
            }
        }
    });

    // Not signed in: the sign-in page; the token signs in.
    page.goto(format!("{base}/")).await.unwrap();
    page.wait_for_navigation().await.unwrap();
    page.find_element("input[name=token]")
        .await
        .expect("the sign-in page")
        .click()
        .await
        .unwrap()
        .type_str(TOKEN)
        .await
        .unwrap()
        .press_key("Enter")
        .await
        .unwrap();
    let card = "article[data-name=web]";
    let state = format!("{card} [data-testid=state]");
    until("the running container's card", || async {
        text_of(&page, &state).await == "running"
    })
    .await;
    let memory = text_of(&page, &format!("{card} [data-testid=memory]")).await;
    assert!(
        memory.contains("private") && memory.contains("MiB"),
        "memory figures: {memory:?}"
    );
    let main = text_of(&page, "main").await;
    for expected in [
        "clone of template",
        "1 vCPU",
        "Templates",
        "Networks",
        "bridge",
    ] {
        assert!(main.contains(expected), "{expected:?} in {main}");
    }
    // Events arrive on their own: the start is there.
    until("the event list shows the start", || async {
        text_of(&page, "#event-list").await.contains("start")
    })
    .await;
    screenshot(&page, "overview").await;

    // Stop it from the page: confirmed, then the card says so without a reload.
    page.evaluate("window.__notReloaded = true").await.unwrap();
    page.find_element(format!("{card} button[data-action=stop]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until("the card shows the container exited", || async {
        text_of(&page, &state).await == "exited"
    })
    .await;
    assert_eq!(
        confirmations.lock().unwrap().as_slice(),
        ["Stop the container web?"]
    );
    let docker = daemon.clone();
    let status =
        blocking(move || docker.docker_ok(&["inspect", "-f", "{{.State.Status}}", "web"])).await;
    assert_eq!(status, "exited");
    until("the die event arrives live", || async {
        text_of(&page, "#event-list").await.contains("die")
    })
    .await;
    assert!(
        holds(&page, "window.__notReloaded === true").await,
        "the page was reloaded"
    );
    screenshot(&page, "stopped").await;

    // A change made elsewhere shows up by itself too.
    let docker = daemon.clone();
    blocking(move || docker.docker_ok(&["start", "web"])).await;
    until("the card shows the container running again", || async {
        text_of(&page, &state).await == "running"
    })
    .await;

    // Phone width: one column, nothing wider than the screen.
    page.execute(SetDeviceMetricsOverrideParams::new(390, 844, 3.0, true))
        .await
        .unwrap();
    let fits =
        "window.innerWidth === 390 && document.documentElement.scrollWidth <= window.innerWidth";
    for _ in 0..50 {
        if holds(&page, fits).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !holds(&page, fits).await {
        let wide = page
            .evaluate(
                "JSON.stringify([window.innerWidth, document.documentElement.scrollWidth, \
                 [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > window.innerWidth + 1) \
                 .slice(0, 8).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))])",
            )
            .await
            .ok()
            .and_then(|result| result.into_value::<String>().ok());
        screenshot(&page, "phone-too-wide").await;
        panic!("the page is wider than a phone's screen: {wide:?}");
    }
    screenshot(&page, "phone").await;
    page.execute(SetDeviceMetricsOverrideParams::new(1280, 1000, 1.0, false))
        .await
        .unwrap();

    // The container's own page: its log and its VM's console, followed live.
    let docker = daemon.clone();
    let id = blocking(move || {
        docker.docker_ok(&[
            "run",
            "-d",
            "--name",
            "talker",
            "busybox",
            "sh",
            "-c",
            "echo first-line; echo on-the-vm-console > /dev/console; sleep 3; echo later-line; sleep 600",
        ])
    })
    .await;
    page.goto(format!("{base}/containers/{id}")).await.unwrap();
    page.wait_for_navigation().await.unwrap();
    until("the log streams in, line after line", || async {
        let log = text_of(&page, "#log").await;
        log.contains("first-line") && log.contains("later-line")
    })
    .await;
    // The container's /dev/console is its VM's serial console.
    until("the VM's console log is shown", || async {
        text_of(&page, "#console")
            .await
            .contains("on-the-vm-console")
    })
    .await;
    screenshot(&page, "container").await;

    browser.close().await.unwrap();
    answering.abort();
    driver.abort();
    drop(daemon);
}
