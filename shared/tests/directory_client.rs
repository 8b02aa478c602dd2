//! The directory reads (`shared::graph` directory part) against graphsim's directory estate: users with every
//! mapped field and their managers, guests, `UserFilter`, org contacts, nested groups by id and by mail, the
//! organisation, `/users/delta`, and an error naming the missing permission. Each read also goes through the pure
//! selection, so the two halves are tested together.

use std::time::Duration;

use graphsim::{seed_directory, DirectoryParams, SeededDirectory, Sim, SimConfig};
use serde_json::{json, Map};
use shared::config::{
    DirectoryOptions, GroupRef, MemberType, MemberTypes, TenantSettings, UserFilter,
};
use shared::directory::{
    persons_for, persons_generation, select, DirectoryRead, GroupFilter, UserRecord,
};
use shared::graph::{
    ClientOptions, DirectoryError, DirectoryPermission, ErrorKind, GraphClient, TenantClient,
    UserKind,
};
use shared::model::Mailbox;
use shared::secret::Secret;
use url::Url;

struct Fixture {
    sim: Sim,
    d: SeededDirectory,
    tenant: TenantClient,
}

fn settings(sim: &Sim, d: &SeededDirectory) -> TenantSettings {
    TenantSettings {
        tenant_id: d.tenant.tenant_id.clone(),
        client_id: d.tenant.client_id.clone(),
        credential: shared::credential::Credential::Secret(Secret::new(&d.tenant.client_secret)),
        global_address_book_user_id: d.tenant.shared_mailbox_upn.clone(),
        test_user_list: None,
        domains: Vec::new(),
        enabled: true,
        dry_run: false,
        authority_host: Url::parse(&sim.authority_url()).expect("authority url"),
        graph_endpoint: Url::parse(&sim.graph_url()).expect("graph url"),
        mirror: shared::config::MirrorOptions {
            central_folder_name: "All Contacts".into(),
            managed_category: None,
            stamp_notes: true,
            opt_out_category: "Private".into(),
            deletion: shared::config::DeletionPolicy {
                enabled: true,
                max_share: 0.1,
            },
            update_existing: true,
            fields: Default::default(),
        },
        limits: shared::config::GraphLimits::default(),
        photos: false,
        distribution: Default::default(),
    }
}

fn client(sim: &Sim, d: &SeededDirectory) -> TenantClient {
    let options = ClientOptions {
        max_attempts: 3,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..ClientOptions::default()
    };
    GraphClient::new(options)
        .expect("client")
        .tenant(&settings(sim, d))
}

async fn fixture() -> Fixture {
    let sim = graphsim::spawn(SimConfig::default())
        .await
        .expect("graphsim starts");
    let d = seed_directory(&sim, DirectoryParams::default());
    let tenant = client(&sim, &d);
    Fixture { sim, d, tenant }
}

fn upns(users: &[UserRecord]) -> Vec<String> {
    let mut out: Vec<String> = users
        .iter()
        .filter_map(|u| u.user_principal_name.clone())
        .collect();
    out.sort();
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn members_come_with_every_field_and_their_manager_in_two_requests() {
    let f = fixture().await;
    let users = f
        .tenant
        .directory_users(UserKind::Members, None)
        .await
        .expect("members");
    assert_eq!(
        f.tenant.tally().0,
        2,
        "one page of members and one of managers (the token is not a Graph request)"
    );
    // Graph returns enabled licensed accounts; hidden users too (the selection drops them).
    let mut expected = f.d.members.clone();
    expected.push(f.d.hidden.clone());
    assert_eq!(upns(&users), sorted(expected));
    let second = users
        .iter()
        .find(|u| u.user_principal_name.as_deref() == Some(f.d.members[1].as_str()))
        .expect("member 1");
    let boss = second.manager.as_ref().expect("a manager");
    assert!(boss.display_name.as_deref().is_some_and(|n| !n.is_empty()));
    assert!(
        second.street_address.is_some() && second.country.is_some() && second.job_title.is_some()
    );
    assert!(second
        .proxy_addresses
        .iter()
        .any(|p| p.starts_with("SMTP:")));
    assert!(second.is_licensed());
    assert!(users
        .iter()
        .find(|u| u.user_principal_name.as_deref() == Some(f.d.members[0].as_str()))
        .is_some_and(|u| u.manager.is_none()));

    // Through the pure selection: the hidden user and the shared mailbox are left out; nobody gets themselves.
    let organization = f.tenant.organization_name().await.expect("organization");
    let persons = select(
        &DirectoryRead {
            tenant_id: &f.d.tenant.tenant_id,
            users: &users,
            org_contacts: &[],
            groups: &GroupFilter::default(),
            organization_name: organization.as_deref(),
            shared_mailbox: Some(&f.d.tenant.shared_mailbox_upn),
        },
        &DirectoryOptions::default(),
    );
    let mut got: Vec<String> = persons
        .iter()
        .filter_map(|p| p.user_principal_name.clone())
        .collect();
    got.sort();
    assert_eq!(got, sorted(f.d.members.clone()));
    let receiver = users
        .iter()
        .find(|u| u.user_principal_name.as_deref() == Some(f.d.members[2].as_str()))
        .expect("member 2");
    let mailbox = Mailbox {
        id: receiver.id.clone(),
        upn: f.d.members[2].clone(),
    };
    assert_eq!(persons_for(&mailbox, &persons).len(), persons.len() - 1);
    // Users without a company name get the organisation's.
    assert!(persons.iter().all(|p| p
        .fields
        .company_name
        .as_deref()
        .is_some_and(|c| !c.is_empty())));
}

#[tokio::test]
async fn guests_user_filter_and_its_rejection() {
    let f = fixture().await;
    let guests = f
        .tenant
        .directory_users(UserKind::Guests, None)
        .await
        .expect("guests");
    assert_eq!(upns(&guests), sorted(f.d.guests.clone()));
    assert!(guests.iter().all(UserRecord::is_guest));

    // The seeded departments cycle Engineering, Finance, Sales: member2 and member5 are in Sales.
    let sales = UserFilter::parse("department eq 'Sales'").expect("valid filter");
    let users = f
        .tenant
        .directory_users(UserKind::Members, Some(&sales))
        .await
        .expect("filtered members");
    assert!(!users.is_empty());
    assert!(
        users
            .iter()
            .all(|u| u.department.as_deref() == Some("Sales")),
        "{users:?}"
    );
    assert!(users.len() < f.d.members.len());

    let unknown = UserFilter::parse("favouriteColour eq 'blue'").expect("passes the config check");
    let error = f
        .tenant
        .directory_users(UserKind::Members, Some(&unknown))
        .await
        .expect_err("Graph refuses it");
    assert!(
        matches!(error, DirectoryError::UserFilterRejected { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("Directory.UserFilter"), "{message}");
    assert!(message.contains("favouriteColour"), "{message}");
    assert!(!error.is_transient());
}

#[tokio::test]
async fn org_contacts_and_groups_by_id_and_mail_with_nesting() {
    let f = fixture().await;
    let contacts = f.tenant.org_contacts().await.expect("org contacts");
    let ids: Vec<String> = contacts.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids, f.d.org_contacts);
    assert!(contacts
        .iter()
        .all(|c| !c.phones.is_empty() && !c.addresses.is_empty()));

    let domain = &f.d.tenant.tenant_id;
    let staff = GroupRef::parse(&format!("STAFF@{domain}")).expect("a mail address");
    let members = f.tenant.group_members(&staff).await.expect("staff members");
    let by_id = f
        .tenant
        .group_members(&GroupRef::parse(&f.d.staff_group).expect("a GUID"))
        .await
        .expect("staff members by id");
    assert_eq!(sorted(members.clone()), sorted(by_id));
    assert!(members.contains(&f.d.sales_group), "nested group listed");

    // Sales (nested in Staff) holds the first half of the members and the first guest: all in Staff's list.
    let users = f
        .tenant
        .directory_users(UserKind::Members, None)
        .await
        .expect("members");
    let guests = f
        .tenant
        .directory_users(UserKind::Guests, None)
        .await
        .expect("guests");
    let filter = GroupFilter::new(Some(members), Vec::<String>::new());
    let everyone = DirectoryOptions {
        member_types: MemberTypes::new([
            MemberType::Member,
            MemberType::Guest,
            MemberType::Contact,
        ])
        .expect("non-empty"),
        ..DirectoryOptions::default()
    };
    let all_users: Vec<UserRecord> = users.into_iter().chain(guests).collect();
    let persons = select(
        &DirectoryRead {
            tenant_id: domain,
            users: &all_users,
            org_contacts: &contacts,
            groups: &filter,
            organization_name: None,
            shared_mailbox: Some(&f.d.tenant.shared_mailbox_upn),
        },
        &everyone,
    );
    let mut got: Vec<String> = persons
        .iter()
        .filter_map(|p| p.user_principal_name.clone())
        .collect();
    got.sort();
    let mut expected = f.d.members.clone();
    expected.push(f.d.guests[0].clone());
    assert_eq!(got, sorted(expected));
    assert!(
        persons.iter().all(|p| p.kind != MemberType::Contact),
        "org contacts are not staff"
    );

    let nobody = GroupRef::parse(&format!("nobody@{domain}")).expect("mail");
    let error = f
        .tenant
        .group_members(&nobody)
        .await
        .expect_err("no such group");
    assert!(
        matches!(error, DirectoryError::GroupNotFound { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains(&format!("nobody@{domain}")));
    let ghost = GroupRef::parse("00000000-0000-0000-0000-00000000abcd").expect("GUID");
    let error = f
        .tenant
        .group_members(&ghost)
        .await
        .expect_err("no such group");
    assert!(
        matches!(error, DirectoryError::GroupNotFound { .. }),
        "{error:?}"
    );

    f.sim
        .set_organization_name(domain, "Directory Holdings")
        .expect("tenant");
    assert_eq!(
        f.tenant
            .organization_name()
            .await
            .expect("organization")
            .as_deref(),
        Some("Directory Holdings")
    );
}

#[tokio::test]
async fn users_delta_keeps_its_link_and_reports_leavers() {
    let f = fixture().await;
    let domain = f.d.tenant.tenant_id.clone();
    let first = f.tenant.users_delta_start().await.expect("first round");
    assert_eq!(first.changed.len(), f.d.tenant.user_upns.len() + 1);
    assert!(first.removed.is_empty());
    assert!(first
        .changed
        .iter()
        .any(|u| u.manager.as_ref().is_some_and(|m| m.display_name.is_some())));
    assert!(first.changed.iter().all(|u| u.account_enabled.is_some()));

    let before = f.tenant.tally().0;
    let quiet = f
        .tenant
        .users_delta_since(&first.link)
        .await
        .expect("no change");
    assert!(quiet.changed.is_empty() && quiet.removed.is_empty());
    assert_eq!(
        f.tenant.tally().0 - before,
        1,
        "a quiet round is one request"
    );

    let mut off = Map::new();
    off.insert("accountEnabled".into(), json!(false));
    f.sim
        .update_user(&domain, &f.d.members[1], off)
        .expect("user");
    f.sim.remove_user(&domain, &f.d.members[2]).expect("user");
    let round = f
        .tenant
        .users_delta_since(&quiet.link)
        .await
        .expect("changes");
    assert_eq!(round.changed.len(), 1);
    assert_eq!(
        round.changed[0].user_principal_name.as_deref(),
        Some(f.d.members[1].as_str())
    );
    assert_eq!(
        round.changed[0].account_enabled,
        Some(false),
        "disabled is a change, not a removal"
    );
    assert_eq!(round.removed.len(), 1);
    assert!(first.changed.iter().any(|u| u.id == round.removed[0]
        && u.user_principal_name.as_deref() == Some(f.d.members[2].as_str())));

    f.sim.invalidate_delta_tokens();
    let error = f
        .tenant
        .users_delta_since(&round.link)
        .await
        .expect_err("an invalidated link");
    match error {
        DirectoryError::Graph(e) => assert_eq!(e.kind(), ErrorKind::InvalidDeltaToken),
        other => panic!("expected a Graph error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_permission_is_named() {
    let f = fixture().await;
    let domain = f.d.tenant.tenant_id.clone();
    f.sim
        .set_app_roles(&domain, &["Contacts.ReadWrite", "User.Read.All"])
        .expect("tenant");
    let tenant = client(&f.sim, &f.d);
    let staff = GroupRef::parse(&format!("staff@{domain}")).expect("mail");
    for (error, permission) in [
        (
            tenant.group_members(&staff).await.expect_err("denied"),
            DirectoryPermission::GroupMemberReadAll,
        ),
        (
            tenant.org_contacts().await.expect_err("denied"),
            DirectoryPermission::OrgContactReadAll,
        ),
        (
            tenant.organization_name().await.expect_err("denied"),
            DirectoryPermission::OrganizationReadAll,
        ),
    ] {
        match &error {
            DirectoryError::MissingPermission { permission: p, .. } => assert_eq!(*p, permission),
            other => panic!("expected a missing permission, got {other:?}"),
        }
        let message = error.to_string();
        assert!(message.contains(permission.as_str()), "{message}");
        assert!(message.contains("Insufficient privileges"), "{message}");
        assert!(
            !message.contains(&f.d.tenant.client_secret),
            "no secret in {message}"
        );
        assert!(!error.is_transient());
    }
    assert!(tenant
        .directory_users(UserKind::Members, None)
        .await
        .is_ok());

    f.sim
        .set_app_roles(&domain, &["GroupMember.Read.All"])
        .expect("tenant");
    let tenant = client(&f.sim, &f.d);
    let error = tenant
        .users_delta_start()
        .await
        .expect_err("no User.Read.All");
    assert!(error.to_string().contains("User.Read.All"), "{error}");
    let error = tenant
        .directory_users(UserKind::Guests, None)
        .await
        .expect_err("no User.Read.All");
    assert!(matches!(
        error,
        DirectoryError::MissingPermission {
            permission: DirectoryPermission::UserReadAll,
            ..
        }
    ));
}

#[tokio::test]
async fn a_tenant_directory_is_read_once_in_a_constant_number_of_requests() {
    let f = fixture().await;
    let domain = f.d.tenant.tenant_id.clone();
    let options = DirectoryOptions {
        enabled: true,
        member_types: MemberTypes::new([
            MemberType::Member,
            MemberType::Guest,
            MemberType::Contact,
        ])
        .expect("non-empty"),
        include_groups: vec![GroupRef::parse(&format!("staff@{domain}")).expect("mail")],
        exclude_groups: vec![GroupRef::parse(&f.d.external_group).expect("GUID")],
        ..DirectoryOptions::default()
    };
    let snapshot = f
        .tenant
        .read_directory(&options, Some(&f.d.tenant.shared_mailbox_upn))
        .await
        .expect("directory");
    // Members, guests, managers, org contacts, the include group by mail (lookup + members), the exclude group
    // by id (members), the organisation: 8, however many mailboxes will receive it.
    assert_eq!(f.tenant.tally().0, 8);
    let persons = select(&snapshot.read(), &options);
    let mut got: Vec<String> = persons
        .iter()
        .filter_map(|p| p.user_principal_name.clone())
        .collect();
    got.sort();
    // Staff holds every visible member and the first guest (through Sales); External removes the guest.
    assert_eq!(got, sorted(f.d.members.clone()));
    assert_eq!(
        persons.len(),
        f.d.members.len(),
        "org contacts are not in Staff"
    );
    assert!(persons.iter().skip(1).any(|p| p.fields.manager.is_some()));

    // The default settings: members, their managers and the organisation.
    let tenant = client(&f.sim, &f.d);
    let snapshot = tenant
        .read_directory(&DirectoryOptions::default(), None)
        .await
        .expect("directory");
    assert_eq!(tenant.tally().0, 3);
    assert!(snapshot.org_contacts.is_empty());
    assert_eq!(snapshot.organization_name.as_deref(), Some("Directory-s1"));
}

#[tokio::test]
async fn another_tenants_directory_is_read_with_its_own_credentials_and_filters() {
    let f = fixture().await;
    let fabrikam = seed_directory(
        &f.sim,
        DirectoryParams {
            domain: "fabrikam-dir.onmicrosoft.com".into(),
            members: 3,
            guests: 1,
            org_contacts: 1,
        },
    );
    let source = client(&f.sim, &fabrikam);
    // Fabrikam's own settings decide what it exports: members and its org contacts.
    let exported = DirectoryOptions {
        member_types: MemberTypes::new([MemberType::Member, MemberType::Contact])
            .expect("non-empty"),
        ..DirectoryOptions::default()
    };
    let snapshot = source
        .read_directory(&exported, Some(&fabrikam.tenant.shared_mailbox_upn))
        .await
        .expect("fabrikam's directory");
    assert_eq!(
        f.tenant.tally().0,
        0,
        "nothing asked of the receiving tenant"
    );
    let persons = select(&snapshot.read(), &exported);
    assert_eq!(persons.len(), 3 + 1);
    assert!(persons.iter().all(|p| p.sync_id
        == shared::directory::directory_sync_id(&fabrikam.tenant.tenant_id, &p.object_id)));
    // A receiving mailbox of another tenant gets every exported person.
    let users = f
        .tenant
        .directory_users(UserKind::Members, None)
        .await
        .expect("receivers");
    let receiver = &users[0];
    let mailbox = Mailbox {
        id: receiver.id.clone(),
        upn: receiver.user_principal_name.clone().unwrap_or_default(),
    };
    assert_eq!(persons_for(&mailbox, &persons).len(), persons.len());
}

/// The producer reads the directory from its users feed, a worker with listings: both must select exactly the same
/// persons, field for field, or no mailbox could ever be proved in line (`persons_generation` compares them). A
/// kept feed with nothing changed costs one users request and selects the same again.
#[tokio::test]
async fn the_users_feed_selects_exactly_what_the_listings_select() {
    let f = fixture().await;
    let shared_mailbox = Some(f.d.tenant.shared_mailbox_upn.as_str());
    let every = MemberTypes::new([MemberType::Member, MemberType::Guest, MemberType::Contact])
        .expect("non-empty");
    for options in [
        DirectoryOptions::default(),
        DirectoryOptions {
            member_types: every,
            exclude_hidden: false,
            ..DirectoryOptions::default()
        },
    ] {
        let listed = f
            .tenant
            .read_directory(&options, shared_mailbox)
            .await
            .expect("listings");
        let listed = select(&listed.read(), &options);
        assert!(listed.len() > 2, "{listed:?}");
        let (fed, kept) = f
            .tenant
            .read_directory_kept(&options, shared_mailbox, None)
            .await
            .expect("users feed");
        assert_eq!(select(&fed.read(), &options), listed);
        assert_eq!(
            persons_generation(&select(&fed.read(), &options)),
            persons_generation(&listed)
        );
        let before = f.tenant.tally().0;
        let (again, _) = f
            .tenant
            .read_directory_kept(&options, shared_mailbox, kept)
            .await
            .expect("from the kept link");
        assert_eq!(select(&again.read(), &options), listed);
        let users_requests = f.tenant.tally().0 - before;
        // One users delta round, the organisation, and org contacts when listed.
        assert!(users_requests <= 3, "{users_requests} requests");
    }
}
