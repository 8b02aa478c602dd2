//! The HTML run report, rendered by a real browser: headless Chromium loads the page from disk and dumps the DOM
//! it built, and the test reads tenants, counts, chart bars and escaped error texts back from it.
//!
//! Chromium is part of the test environment (`.ci/run` installs Debian's `chromium`); without it these tests
//! fail with instructions, they never skip.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use graphsim::{EstateParams, SimConfig};
use producer::cli::Cli;

use crate::support::{self, Estate};

/// The Chromium binary: `$CHROMIUM`, else the Debian package's `/usr/bin/chromium`, else `chromium` or
/// `chromium-browser` on the PATH. Panics with the install command when there is none.
fn chromium() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    candidates.push(PathBuf::from("/usr/bin/chromium"));
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            candidates.push(dir.join("chromium"));
            candidates.push(dir.join("chromium-browser"));
        }
    }
    candidates.into_iter().find(|c| c.is_file()).unwrap_or_else(|| {
        panic!(
            "headless Chromium is required to check the HTML report and was not found (looked at $CHROMIUM, \
             /usr/bin/chromium and the PATH). Install it with `apt-get install -y chromium`, or run `bash .ci/run`, \
             which installs it."
        )
    })
}

/// Loads `page` in headless Chromium and returns the serialised DOM after parsing and layout.
fn dump_dom(page: &Path) -> String {
    let scratch = support::scratch_dir("chromium");
    let out = scratch.join("dom.html");
    let stdout = std::fs::File::create(&out).expect("create the DOM dump file");
    let url = format!(
        "file://{}",
        page.canonicalize().expect("page exists").display()
    );
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            // Tests run as root in CI containers, where Chromium's sandbox cannot start.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
        ])
        .arg(format!(
            "--user-data-dir={}",
            scratch.join("profile").display()
        ))
        .arg("--dump-dom")
        .arg(&url)
        .stdin(Stdio::null())
        // A file, not a pipe: nobody reads while the browser writes, so a pipe could fill and block it.
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("could not start Chromium: {e}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        match child.try_wait().expect("wait for Chromium") {
            Some(status) => break status,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("Chromium did not finish rendering {url} within 120 s");
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(status.success(), "Chromium failed on {url}: {status}");
    let dom = std::fs::read_to_string(&out).expect("read the DOM dump");
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        dom.contains("</html>"),
        "Chromium dumped no document: {dom:.500}"
    );
    dom
}

/// Runs the producer's command line in-process, as `contactmirror-producer ARGS`.
async fn producer(args: &[&str]) -> ExitCode {
    let cli =
        Cli::try_parse_from(std::iter::once("contactmirror-producer").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("bad command line {args:?}: {e}"));
    producer::run::dispatch(cli)
        .await
        .expect("the command runs")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// The text between `<tr data-tenant="ID">` and its `</tr>` in the dumped DOM.
fn tenant_row<'a>(dom: &'a str, tenant: &str) -> &'a str {
    let start = dom
        .find(&format!("<tr data-tenant=\"{tenant}\">"))
        .unwrap_or_else(|| panic!("no table row for {tenant}"));
    let end = dom[start..].find("</tr>").map_or(dom.len(), |e| start + e);
    &dom[start..end]
}

/// The value Chromium kept for a bar of `tenant` and `series`.
fn bar_value(dom: &str, tenant: &str, series: &str) -> u64 {
    let needle = format!("data-group=\"{tenant}\" data-series=\"{series}\" data-value=\"");
    let start = dom
        .find(&needle)
        .unwrap_or_else(|| panic!("no {series} bar for {tenant}"))
        + needle.len();
    dom[start..]
        .split('"')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unreadable {series} bar value for {tenant}"))
}

#[tokio::test]
async fn a_real_run_renders_in_chromium_with_its_tenants_counts_and_bars() {
    let estate = Estate::seed(
        SimConfig::default(),
        EstateParams {
            tenants: 2,
            users_per_tenant: 4,
            seed: 8_802,
            ..EstateParams::default()
        },
    )
    .await;
    let dir = support::scratch_dir("report-html");
    let config = dir.join("config.json");
    std::fs::write(&config, estate.config_json().to_string()).expect("write the configuration");
    let json = dir.join("report.json");
    let html = dir.join("report.html");
    let code = producer(&[
        "run",
        "--config",
        path_str(&config),
        "--workers",
        "4",
        "--report",
        path_str(&json),
        "--report-html",
        path_str(&html),
    ])
    .await;
    assert_eq!(code, ExitCode::SUCCESS, "the run succeeded");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("JSON report written"))
            .expect("JSON report parses");

    let dom = dump_dom(&html);
    assert!(dom.contains("contactmirror run report"));
    assert!(dom.contains(report["run_id"].as_str().expect("run id")));
    let mut bars = 0;
    for tenant in report["tenants"].as_array().expect("tenants") {
        let id = tenant["tenant_id"].as_str().expect("tenant id");
        let created: u64 = tenant["phases"]
            .as_object()
            .expect("phases")
            .values()
            .map(|p| p["created"].as_u64().unwrap_or(0))
            .sum();
        assert!(created > 0, "a first run creates contacts in {id}");
        let row = tenant_row(&dom, id);
        assert!(
            row.contains(&format!("<td class=\"num\">{created}</td>")),
            "{id}'s row shows {created} created: {row}"
        );
        assert!(
            row.contains(&format!("<td class=\"num\">{}</td>", tenant["users"])),
            "{row}"
        );
        assert_eq!(bar_value(&dom, id, "created"), created);
        assert_eq!(bar_value(&dom, id, "failed"), 0);
        bars += 4;
    }
    assert_eq!(
        dom.matches("<rect class=\"bar\"").count(),
        bars,
        "one bar per tenant and series"
    );
    assert!(dom.contains("id=\"outcomes-chart\""));

    // The `report` subcommand turns the same JSON into the same page.
    let again = dir.join("again.html");
    let code = producer(&[
        "report",
        "--input",
        path_str(&json),
        "--html",
        path_str(&again),
    ])
    .await;
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(
        std::fs::read_to_string(&again).expect("page written"),
        std::fs::read_to_string(&html).expect("page written"),
        "run --report-html and report --html agree"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn failures_and_throttling_render_escaped_in_chromium() {
    let dir = support::scratch_dir("report-html-failures");
    let json = dir.join("report.json");
    let report = serde_json::json!({
        "run_id": "0190a000-0000-7000-8000-00000000beef",
        "mode": "broker",
        "dry_run": false,
        "started_at": "2026-01-01T10:00:00Z",
        "finished_at": "2026-01-01T10:04:00Z",
        "duration_ms": 240_000,
        "tenants": [
            {
                "tenant_id": "fabrikam.onmicrosoft.com",
                "users": 12,
                "phases": { "phase1": { "created": 12, "updated": 0, "deleted": 0, "skipped": 0, "failed": 0 },
                            "phase2": { "created": 130, "updated": 7, "deleted": 3, "skipped": 2, "failed": 2 } },
                "mailboxes": [{ "mailbox": "eve@fabrikam.com", "phase": "phase2", "outcome": "failed",
                                "reason": "access_denied",
                                "error": "<script>document.title='pwned'</script>ErrorAccessDenied", "attempts": 1 }],
                "graph": { "requests": 400, "throttled": 9 },
                "retries": 4,
                "duration_ms": 230_000,
                "throttle_timeline": [
                    { "at": "2026-01-01T10:00:20Z", "throttled": 4 },
                    { "at": "2026-01-01T10:03:50Z", "throttled": 5 }
                ]
            },
            {
                "tenant_id": "tailspin.onmicrosoft.com",
                "error": "AADSTS7000215: Invalid client secret provided",
                "users": 0,
                "phases": {},
                "mailboxes": [],
                "graph": { "requests": 1, "throttled": 0 },
                "retries": 0,
                "duration_ms": 0
            }
        ]
    });
    std::fs::write(&json, report.to_string()).expect("write the report");
    let html = dir.join("report.html");
    let code = producer(&[
        "report",
        "--input",
        path_str(&json),
        "--html",
        path_str(&html),
    ])
    .await;
    assert_eq!(code, ExitCode::SUCCESS);

    let dom = dump_dom(&html);
    // The error text is shown as text: Chromium built no script element from it and the title is untouched.
    assert!(
        dom.contains("&lt;script&gt;document.title='pwned'&lt;/script&gt;ErrorAccessDenied"),
        "{dom}"
    );
    assert!(!dom.contains("<script"), "no script element in the page");
    assert!(dom.contains("<title>contactmirror run 0190a000-0000-7000-8000-00000000beef</title>"));
    assert!(tenant_row(&dom, "fabrikam.onmicrosoft.com").contains("<td class=\"num\">142</td>"));
    assert!(tenant_row(&dom, "tailspin.onmicrosoft.com").contains("FAILED"));
    assert!(dom.contains("AADSTS7000215: Invalid client secret provided"));
    assert_eq!(bar_value(&dom, "fabrikam.onmicrosoft.com", "created"), 142);
    assert_eq!(bar_value(&dom, "fabrikam.onmicrosoft.com", "failed"), 3);
    assert_eq!(bar_value(&dom, "tailspin.onmicrosoft.com", "failed"), 1);
    // Throttling over time: 4 early, 5 late, in different slices of the 4-minute run.
    assert!(dom.contains("id=\"throttle-chart\""));
    assert!(
        dom.contains("data-bin=\"2\" data-value=\"4\""),
        "early 429s in slice 2"
    );
    assert!(
        dom.contains("data-bin=\"23\" data-value=\"5\""),
        "late 429s in the last slice"
    );
    assert!(dom.contains("id=\"run-status\">failures<"));

    // A file that is not a run report is a usage error, not a broken page.
    std::fs::write(&json, b"{\"not\": \"a report\"}").expect("write");
    let code = producer(&[
        "report",
        "--input",
        path_str(&json),
        "--html",
        path_str(&html),
    ])
    .await;
    assert_eq!(code, ExitCode::from(producer::EXIT_USAGE));
    let _ = std::fs::remove_dir_all(&dir);
}
