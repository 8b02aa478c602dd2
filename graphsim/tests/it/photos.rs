//! Photos (issue 14): users' and contacts' photos as bytes, Graph's 404 `ImageNotFound`, the 4 MB request limit
//! and the per-mailbox upload budget (429 with `Retry-After`).

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::support::*;
use graphsim::sample_jpeg;

/// One binary request: status, content type and the raw body.
async fn raw(
    env: &Env,
    method: Method,
    path: &str,
    body: Option<(&[u8], &str)>,
) -> (u16, String, Vec<u8>) {
    let mut req = env
        .http
        .request(method, env.url(path))
        .bearer_auth(&env.token);
    if let Some((bytes, content_type)) = body {
        req = req
            .header("content-type", content_type)
            .body(bytes.to_vec());
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (
        status,
        content_type,
        resp.bytes().await.expect("body").to_vec(),
    )
}

fn error_code(body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).expect("a JSON error");
    assert!(
        value["error"]["innerError"]["request-id"].is_string(),
        "{value}"
    );
    value["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn user_photos_are_bytes_or_404_image_not_found() {
    let env = env().await;
    let path = format!("/users/{ALICE}/photo/$value");
    let (status, _, body) = raw(&env, Method::GET, &path, None).await;
    assert_eq!((status, error_code(&body).as_str()), (404, "ImageNotFound"));
    let photo = sample_jpeg("alice", 500);
    env.sim.set_user_photo(TENANT, ALICE, Some(photo.clone()));
    let (status, content_type, body) = raw(&env, Method::GET, &path, None).await;
    assert_eq!((status, content_type.as_str()), (200, "image/jpeg"));
    assert_eq!(body, photo);
}

#[tokio::test]
async fn contact_photos_are_put_read_and_deleted_and_move_the_change_key() {
    let env = env().await;
    let created = env
        .post(
            &format!("/users/{ALICE}/contacts"),
            json!({"displayName": "Ann"}),
        )
        .await;
    assert_eq!(created.status, 201);
    let id = created.body["id"].as_str().expect("id").to_owned();
    let key = created.body["changeKey"].clone();
    let path = format!("/users/{ALICE}/contacts/{}/photo/$value", enc(&id));
    let (status, _, body) = raw(&env, Method::GET, &path, None).await;
    assert_eq!((status, error_code(&body).as_str()), (404, "ImageNotFound"));

    let photo = sample_jpeg("ann", 700);
    let (status, _, _) = raw(&env, Method::PUT, &path, Some((&photo, "image/jpeg"))).await;
    assert_eq!(status, 200);
    let (status, _, body) = raw(&env, Method::GET, &path, None).await;
    assert_eq!((status, body), (200, photo));
    let after = env
        .get(&format!("/users/{ALICE}/contacts/{}", enc(&id)))
        .await;
    assert_ne!(
        after.body["changeKey"], key,
        "a photo is a change of the contact"
    );

    // The contactFolders form names the same photo.
    let folder = env.sim.default_folder_id(TENANT, ALICE).expect("folder");
    let folder_path = format!(
        "/users/{ALICE}/contactFolders/{}/contacts/{}/photo/$value",
        enc(&folder),
        enc(&id)
    );
    let (status, _, _) = raw(&env, Method::DELETE, &folder_path, None).await;
    assert_eq!(status, 204);
    let (status, _, body) = raw(&env, Method::GET, &path, None).await;
    assert_eq!((status, error_code(&body).as_str()), (404, "ImageNotFound"));
    let (status, _, body) = raw(&env, Method::DELETE, &path, None).await;
    assert_eq!((status, error_code(&body).as_str()), (404, "ImageNotFound"));
}

#[tokio::test]
async fn photo_bodies_are_checked_like_graph() {
    let env = env().await;
    let created = env
        .post(
            &format!("/users/{ALICE}/contacts"),
            json!({"displayName": "Ann"}),
        )
        .await;
    let id = created.body["id"].as_str().expect("id").to_owned();
    let path = format!("/users/{ALICE}/contacts/{}/photo/$value", enc(&id));
    let (status, _, _) = raw(
        &env,
        Method::PUT,
        &path,
        Some((b"plain text", "text/plain")),
    )
    .await;
    assert_eq!(status, 415);
    let (status, _, _) = raw(
        &env,
        Method::PUT,
        &path,
        Some((b"not a jpeg", "image/jpeg")),
    )
    .await;
    assert_eq!(status, 400);
    let big = sample_jpeg("big", 4 * 1024 * 1024 + 1);
    let (status, _, body) = raw(&env, Method::PUT, &path, Some((&big, "image/jpeg"))).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (413, "RequestEntityTooLarge")
    );
    assert!(env.sim.contact_photo(TENANT, ALICE, &id).is_none());
}

#[tokio::test]
async fn the_upload_budget_answers_429_with_retry_after_per_mailbox() {
    let env = env().await;
    env.sim.set_upload_budget(1_500, Duration::from_secs(2));
    let mut ids = Vec::new();
    for user in [ALICE, BOB] {
        let created = env
            .post(
                &format!("/users/{user}/contacts"),
                json!({"displayName": "Ann"}),
            )
            .await;
        ids.push((user, created.body["id"].as_str().expect("id").to_owned()));
    }
    let photo = sample_jpeg("p", 1_000);
    let put = |user: &str, id: &str| format!("/users/{user}/contacts/{}/photo/$value", enc(id));
    let (alice, alice_id) = &ids[0];
    let (status, _, _) = raw(
        &env,
        Method::PUT,
        &put(alice, alice_id),
        Some((&photo, "image/jpeg")),
    )
    .await;
    assert_eq!(status, 200);
    let resp = env
        .http
        .put(env.url(&put(alice, alice_id)))
        .bearer_auth(&env.token)
        .header("content-type", "image/jpeg")
        .body(photo.clone())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 429);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .expect("header")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body = resp.bytes().await.expect("body");
    assert_eq!(error_code(&body), "ApplicationThrottled");
    assert_eq!(env.sim.upload_refusals(), 1);
    // Bob's mailbox has its own budget.
    let (bob, bob_id) = &ids[1];
    let (status, _, _) = raw(
        &env,
        Method::PUT,
        &put(bob, bob_id),
        Some((&photo, "image/jpeg")),
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let (status, _, _) = raw(
        &env,
        Method::PUT,
        &put(alice, alice_id),
        Some((&photo, "image/jpeg")),
    )
    .await;
    assert_eq!(status, 200, "room again once the window passed");
}

/// Exchange keeps a contact's photo as an attachment and says so in MAPI's `PidLidHasPicture`, expandable like any
/// single-value extended property: absent before any photo, "true" once one is put, "false" once it is removed,
/// each time with a new change key (schema-checked). Failed before graphsim set it with the photo.
#[tokio::test]
async fn a_contact_photo_sets_pid_lid_has_picture_with_a_new_change_key() {
    const HAS_PICTURE: &str = "Boolean {00062004-0000-0000-C000-000000000046} Id 0x8015";
    let env = env().await;
    let created = env
        .post(
            &format!("/users/{ALICE}/contacts"),
            json!({"displayName": "Bea"}),
        )
        .await;
    let id = created.body["id"].as_str().expect("id").to_owned();
    let item = format!("/users/{ALICE}/contacts/{}", enc(&id));
    let expanded =
        format!("{item}?$expand=singleValueExtendedProperties($filter=id eq '{HAS_PICTURE}')");
    let mut schemas = crate::conformance::Schemas::load();
    let mut states = Vec::new();
    for step in [None, Some(Method::PUT), Some(Method::DELETE)] {
        if let Some(method) = step {
            let photo = sample_jpeg("bea", 600);
            let body = (method == Method::PUT).then_some((photo.as_slice(), "image/jpeg"));
            let (status, _, _) = raw(&env, method, &format!("{item}/photo/$value"), body).await;
            assert!(status == 200 || status == 204, "{status}");
        }
        let got = env.get(&expanded).await;
        assert_eq!(got.status, 200, "{}", got.body);
        assert_eq!(
            schemas.errors("microsoft.graph.contact", &got.body),
            Vec::<String>::new()
        );
        let value = got.body["singleValueExtendedProperties"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["id"] == HAS_PICTURE))
            .and_then(|p| p["value"].as_str().map(str::to_owned));
        states.push((value, got.body["changeKey"].clone()));
    }
    let values: Vec<Option<&str>> = states.iter().map(|(v, _)| v.as_deref()).collect();
    assert_eq!(values, [None, Some("true"), Some("false")]);
    assert_ne!(
        states[0].1, states[1].1,
        "a photo put is a change of the contact"
    );
    assert_ne!(
        states[1].1, states[2].1,
        "a photo removed is a change of the contact"
    );
}
