use reqwest::Method;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn bad_input_gets_graph_errors_and_the_server_survives() {
    let env = env().await;
    let contacts = env.url(&format!("/users/{ALICE}/contacts"));
    let send_raw = |method: Method, url: String, body: Vec<u8>| {
        let req = env
            .http
            .request(method, url)
            .bearer_auth(&env.token)
            .header("Content-Type", "application/json")
            .body(body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            (status, text)
        }
    };
    let (s, t) = send_raw(Method::POST, contacts.clone(), b"{not json".to_vec()).await;
    assert_eq!(s, 400);
    assert!(t.contains("\"error\""));
    let (s, _) = send_raw(Method::POST, contacts.clone(), b"[1,2,3]".to_vec()).await;
    assert_eq!(s, 400);
    let (s, _) = send_raw(Method::POST, contacts.clone(), vec![0xff, 0xfe, 0x00]).await;
    assert_eq!(s, 400);
    let huge = vec![b' '; 5 * 1024 * 1024];
    let (s, t) = send_raw(Method::POST, contacts.clone(), huge).await;
    assert_eq!(s, 413);
    assert!(t.contains("RequestEntityTooLarge"));
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (s, _) = send_raw(Method::POST, contacts.clone(), deep.into_bytes()).await;
    assert_eq!(s, 400);
    for path in [
        "/v1.0/nothing",
        "/v1.0",
        "/",
        "/beta/users",
        "/v1.0/users/x/contacts/a/b/c",
        "/v1.0/users/%ZZ/contacts",
        "/v1.0/$metadata",
    ] {
        let (s, t) = send_raw(
            Method::GET,
            format!("{}{path}", env.sim.graph_url()),
            Vec::new(),
        )
        .await;
        assert!((400..500).contains(&s), "{path}: {s}");
        assert!(t.contains("\"code\""), "{path}: {t}");
    }
    for filter in [
        "(((",
        "a eq",
        "'",
        "x/any(",
        "displayName eq 'a' and",
        "emailAddresses/any(a:a/address eq 1)",
    ] {
        let r = env
            .get(&format!("/users/{ALICE}/contacts?$filter={}", enc(filter)))
            .await;
        assert_eq!(r.status, 400, "{filter}");
        let r = env.get(&format!("/users?$filter={}", enc(filter))).await;
        assert_eq!(r.status, 400, "{filter}");
    }
    for bad in [
        "$top=abc",
        "$top=-1",
        "$skip=x",
        "$expand=(((",
        "$expand=manager",
    ] {
        let r = env.get(&format!("/users/{ALICE}/contacts?{bad}")).await;
        assert_eq!(r.status, 400, "{bad}");
    }
    let r = env
        .call(
            Method::PUT,
            &format!("/users/{ALICE}/contacts"),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, 405);
    // Still serving.
    assert_eq!(
        env.get(&format!("/users/{ALICE}/contacts")).await.status,
        200
    );
}

#[tokio::test]
async fn common_headers_on_every_response() {
    let env = env().await;
    let r = env
        .call_with(
            Method::GET,
            &env.url("/users"),
            None,
            &[("client-request-id", "my-id-1")],
        )
        .await;
    assert_eq!(r.headers["client-request-id"], "my-id-1");
    assert!(uuid::Uuid::parse_str(r.headers["request-id"].to_str().unwrap()).is_ok());
    assert!(r.headers.contains_key("date"));
    let err = env
        .call_with(
            Method::GET,
            &env.url("/nothing"),
            None,
            &[("client-request-id", "my-id-2")],
        )
        .await;
    assert_eq!(err.headers["client-request-id"], "my-id-2");
    assert_eq!(
        err.body["error"]["innerError"]["client-request-id"],
        "my-id-2"
    );
    assert_eq!(
        err.body["error"]["innerError"]["request-id"],
        err.headers["request-id"].to_str().unwrap()
    );
    let log = env.sim.request_log();
    assert!(log
        .iter()
        .any(|l| l.client_request_id.as_deref() == Some("my-id-1") && l.status == 200));
}
