//! From a directory entry to the fields of a contact (the README's field-mapping table).
//!
//! The directory is the organisation's record, so a mapped field that is empty in the directory is written as
//! empty (`None`), like the mirror clears what a source cleared. Outlook keeps at most three e-mail addresses
//! per contact, so the primary address comes first and the list stops at three.

use crate::model::{ContactFields, EmailAddress, PhysicalAddress};

use super::record::{OrgContactRecord, UserRecord};

/// Outlook's e-mail slots per contact (Email1..Email3).
pub const MAX_EMAIL_ADDRESSES: usize = 3;

/// How many business (or home) phones a contact holds at most: Graph refuses a contact with more ("The multi value
/// property BusinessPhones has 3 entries, that exceeds the max allowed value of 2", microsoft-graph-docs#15276), so
/// an org contact with three business numbers would fail in every mailbox. The first ones are kept.
pub const MAX_PHONES: usize = 2;

/// A trimmed, non-empty value.
fn text(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// The SMTP addresses of `proxyAddresses`, primary (`SMTP:`) first, then the others in their order.
/// A text field as [`ContactFields`] holds it.
fn boxed(value: Option<String>) -> Option<Box<str>> {
    value.map(String::into_boxed_str)
}

fn smtp_proxies(proxies: &[String]) -> Vec<String> {
    let mut primary = Vec::new();
    let mut others = Vec::new();
    for proxy in proxies {
        let Some((scheme, address)) = proxy.split_once(':') else {
            continue;
        };
        let address = address.trim();
        if address.is_empty() || !scheme.eq_ignore_ascii_case("smtp") {
            continue;
        }
        if scheme == "SMTP" {
            primary.push(address.to_owned());
        } else {
            others.push(address.to_owned());
        }
    }
    primary.extend(others);
    primary
}

/// `mail` first, then the SMTP proxy addresses (primary first), without duplicates (ignoring case), at most
/// [`MAX_EMAIL_ADDRESSES`]; each entry is named with the person's display name.
fn email_addresses(
    mail: &Option<String>,
    proxies: &[String],
    name: &Option<String>,
) -> Vec<EmailAddress> {
    let mut out: Vec<EmailAddress> = Vec::new();
    for address in text(mail).into_iter().chain(smtp_proxies(proxies)) {
        if out.len() == MAX_EMAIL_ADDRESSES {
            break;
        }
        let known = out.iter().any(|e| {
            e.address
                .as_deref()
                .is_some_and(|a| a.eq_ignore_ascii_case(&address))
        });
        if !known {
            out.push(EmailAddress {
                name: name.clone(),
                address: Some(address),
            });
        }
    }
    out
}

/// The display name, else "given surname", else the first address: a contact without a name is unusable on a
/// phone.
fn display_name(
    display: &Option<String>,
    given: &Option<String>,
    surname: &Option<String>,
    emails: &[EmailAddress],
) -> Option<String> {
    text(display)
        .or_else(|| {
            let joined = [text(given), text(surname)]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            (!joined.is_empty()).then_some(joined)
        })
        .or_else(|| emails.first().and_then(|e| e.address.clone()))
}

/// An address, or `None` when every part is empty.
fn address(
    street: &Option<String>,
    city: &Option<String>,
    state: &Option<String>,
    postal_code: &Option<String>,
    country: &Option<String>,
) -> Option<Box<PhysicalAddress>> {
    let a = PhysicalAddress {
        street: text(street),
        city: text(city),
        state: text(state),
        country_or_region: text(country),
        postal_code: text(postal_code),
    };
    (a != PhysicalAddress::default()).then(|| Box::new(a))
}

/// A directory user's contact fields. `organization_name` fills `companyName` when the user has none.
pub fn user_fields(user: &UserRecord, organization_name: Option<&str>) -> ContactFields {
    let name = text(&user.display_name);
    let emails = email_addresses(&user.mail, &user.proxy_addresses, &name);
    ContactFields {
        display_name: boxed(display_name(
            &user.display_name,
            &user.given_name,
            &user.surname,
            &emails,
        )),
        given_name: boxed(text(&user.given_name)),
        surname: boxed(text(&user.surname)),
        job_title: boxed(text(&user.job_title)),
        department: boxed(text(&user.department)),
        company_name: boxed(
            text(&user.company_name).or_else(|| text(&organization_name.map(str::to_owned))),
        ),
        office_location: boxed(text(&user.office_location)),
        business_phones: user
            .business_phones
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .take(MAX_PHONES)
            .collect(),
        mobile_phone: boxed(text(&user.mobile_phone)),
        email_addresses: emails,
        business_address: address(
            &user.street_address,
            &user.city,
            &user.state,
            &user.postal_code,
            &user.country,
        ),
        manager: boxed(user.manager.as_ref().and_then(|m| text(&m.display_name))),
        ..ContactFields::default()
    }
}

/// An org contact's contact fields: its own names, company, job, addresses (the first as business address) and
/// phones by type (`business` -> business phones, the first `mobile` -> mobile phone, `home` -> home phones).
pub fn org_contact_fields(contact: &OrgContactRecord) -> ContactFields {
    let name = text(&contact.display_name);
    let emails = email_addresses(&contact.mail, &contact.proxy_addresses, &name);
    let phones = |kind: &str| -> Vec<String> {
        contact
            .phones
            .iter()
            .filter(|p| {
                p.kind
                    .as_deref()
                    .is_some_and(|k| k.eq_ignore_ascii_case(kind))
            })
            .filter_map(|p| text(&p.number))
            .take(MAX_PHONES)
            .collect()
    };
    let first = contact.addresses.first();
    ContactFields {
        display_name: boxed(display_name(
            &contact.display_name,
            &contact.given_name,
            &contact.surname,
            &emails,
        )),
        given_name: boxed(text(&contact.given_name)),
        surname: boxed(text(&contact.surname)),
        job_title: boxed(text(&contact.job_title)),
        department: boxed(text(&contact.department)),
        company_name: boxed(text(&contact.company_name)),
        office_location: boxed(first.and_then(|a| text(&a.office_location))),
        business_phones: phones("business"),
        home_phones: phones("home"),
        mobile_phone: boxed(phones("mobile").into_iter().next()),
        email_addresses: emails,
        business_address: first.and_then(|a| {
            address(
                &a.street,
                &a.city,
                &a.state,
                &a.postal_code,
                &a.country_or_region,
            )
        }),
        ..ContactFields::default()
    }
}
