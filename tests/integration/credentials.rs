//! Issue 12: tenants authenticated with certificates in one run. A certificate about to expire is warned once,
//! naming the tenant; a certificate the app does not know and an expired one fail their tenant alone, naming the
//! fix; no key material reaches the report.

use graphsim::test_credentials::TestCertificate;
use graphsim::{EstateParams, SimConfig};

use crate::fleet::{embedded_args, run};
use crate::support::{settings_from, Estate};

#[tokio::test]
async fn certificate_tenants_run_and_each_certificate_mistake_fails_only_its_tenant() {
    let estate = Estate::seed(
        SimConfig::default(),
        EstateParams {
            tenants: 3,
            users_per_tenant: 4,
            contacts_per_user: 3,
            overlap: 0.2,
            seed: 12,
        },
    )
    .await;
    let dir = std::env::temp_dir().join(format!("cm-cert-run-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    // Tenant 0: a good certificate that expires in 10 days. Tenant 1: a certificate never uploaded to its app.
    // Tenant 2: an expired certificate (uploaded when it was valid).
    let soon = TestCertificate::valid_for_days("tenant0", 10);
    let stranger = TestCertificate::valid_for_days("tenant1-not-uploaded", 365);
    let uploaded_elsewhere = TestCertificate::valid_for_days("tenant1-uploaded", 365);
    let expired = TestCertificate::expired_since_days("tenant2", 5);
    let t = &estate.tenants;
    estate
        .sim
        .add_app_certificate(&t[0].tenant_id, &soon.certificate_pem)
        .expect("upload");
    estate
        .sim
        .add_app_certificate(&t[1].tenant_id, &uploaded_elsewhere.certificate_pem)
        .expect("upload");
    estate
        .sim
        .add_app_certificate(&t[2].tenant_id, &expired.certificate_pem)
        .expect("upload");
    let mut document = estate.config_json();
    for (i, certificate) in [&soon, &stranger, &expired].into_iter().enumerate() {
        let path = dir.join(format!("tenant{i}.pem"));
        std::fs::write(&path, &certificate.key_and_certificate_pem).expect("pem");
        let tenant = &mut document["MicrosoftTenants"][i];
        tenant
            .as_object_mut()
            .expect("tenant")
            .remove("ClientSecret");
        tenant["CertificateFile"] = path.display().to_string().into();
    }
    let settings = settings_from(&document);

    let report = run(&settings, &embedded_args()).await;

    let good = &report.tenants[0];
    assert!(good.error.is_none(), "{:?}", good.error);
    assert!(!good.failed(), "{}", report.human());
    assert!(
        good.phases.values().any(|c| c.created > 0),
        "{}",
        report.human()
    );
    let central = estate.sim.contacts(
        &t[0].tenant_id,
        &t[0].shared_mailbox_upn,
        Some("All Contacts"),
    );
    assert!(!central.is_empty(), "the certificate tenant was mirrored");
    assert_eq!(good.warnings.len(), 1, "{:?}", good.warnings);
    assert!(
        good.warnings[0].contains(&t[0].tenant_id),
        "{:?}",
        good.warnings
    );
    assert!(
        good.warnings[0].contains("expires on"),
        "{:?}",
        good.warnings
    );

    let wrong = report.tenants[1].error.as_deref().expect("tenant 1 fails");
    assert!(
        wrong.contains("upload the public part of CertificateFile"),
        "{wrong}"
    );
    assert!(wrong.contains("AADSTS700027"), "{wrong}");
    let old = report.tenants[2].error.as_deref().expect("tenant 2 fails");
    assert!(old.contains("the certificate has expired"), "{old}");
    assert!(report.tenants[1].warnings.is_empty() && report.tenants[2].warnings.is_empty());
    assert!(!report.succeeded());

    // No private key or assertion in what the run tells anyone.
    let shown = format!(
        "{} {}",
        serde_json::to_string(&report).expect("json"),
        report.human()
    );
    for certificate in [&soon, &stranger, &expired] {
        for line in certificate
            .key_and_certificate_pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 40)
        {
            assert!(!shown.contains(line), "key material in the report");
        }
    }
    assert!(!shown.contains("eyJ"), "a JWT in the report");
}
