//! Unit tests of the page's structure; the rendering in a real browser is checked by the integration test
//! `report_html`.

use super::*;

fn report(throttled: bool) -> RunReport {
    let timeline = if throttled {
        serde_json::json!([{ "at": "2026-01-01T10:00:30Z", "throttled": 3 }])
    } else {
        serde_json::json!([])
    };
    serde_json::from_value(serde_json::json!({
        "run_id": "0190a000-0000-7000-8000-000000000001",
        "mode": "embedded",
        "dry_run": false,
        "started_at": "2026-01-01T10:00:00Z",
        "finished_at": "2026-01-01T10:01:00Z",
        "duration_ms": 60000,
        "tenants": [{
            "tenant_id": "contoso.onmicrosoft.com",
            "users": 3,
            "phases": { "phase1": { "created": 3, "updated": 1, "deleted": 0, "skipped": 0, "failed": 0 },
                        "phase2": { "created": 6, "updated": 2, "deleted": 1, "skipped": 4, "failed": 1 } },
            "mailboxes": [{ "mailbox": "a@contoso.com", "phase": "phase2", "outcome": "failed",
                            "reason": "access_denied", "error": "<img src=x onerror=alert(1)>", "attempts": 1 }],
            "graph": { "requests": 40, "throttled": if throttled { 3 } else { 0 } },
            "retries": 1,
            "duration_ms": 59000,
            "throttle_timeline": timeline
        }]
    }))
    .expect("a valid report")
}

#[test]
fn page_has_table_charts_and_escaped_errors() {
    let page = render(&report(true));
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.contains(r#"<tr data-tenant="contoso.onmicrosoft.com">"#));
    // created 3 + 6, failed = 1 refused write + 1 failed mailbox.
    assert!(
        page.contains(r#"data-series="created" data-value="9""#),
        "{page}"
    );
    assert!(
        page.contains(r#"data-series="failed" data-value="2""#),
        "{page}"
    );
    assert!(page.contains(r#"id="throttle-chart""#));
    assert!(page.contains(r#"data-bin="12" data-value="3""#), "{page}");
    assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(!page.contains("<img"));
    assert!(
        !page.contains("<script"),
        "no script: the page must work under any CSP"
    );
    assert!(
        !page.contains("https://"),
        "self-contained: nothing is fetched"
    );
}

#[test]
fn no_throttling_says_so() {
    let page = render(&report(false));
    assert!(page.contains(r#"id="no-throttling""#));
    assert!(!page.contains(r#"id="throttle-chart""#));
}

#[test]
fn old_reports_without_a_timeline_chart_totals() {
    let mut report = report(true);
    report.tenants[0].throttle_timeline.clear();
    let page = render(&report);
    assert!(
        page.contains(r#"data-series="throttled" data-value="3""#),
        "{page}"
    );
}
