//! Which person a contact is by its data: the one rule both phases use after sync ids have had their say.
//!
//! Why this exists: phase 1 decides which central person a user's unstamped contact belongs to, and phase 2 which
//! central person claims a user's unstamped contact. If the two answered differently, one run would merge what the
//! other splits, and the folders would never settle. So the answer has one home: the person sharing the most
//! normalised e-mail addresses (the first indexed on a tie), else, when neither side has an address, the first
//! with the same displayName.

use std::collections::{BTreeMap, HashMap};

use super::central::Candidate;

/// Whether two contacts can be one person by their data: a shared normalised address, or no address on either
/// side and the same displayName. A sync id only in the notes (anyone can paste one) is trusted only with this.
pub(crate) fn agrees(a: &Candidate<'_>, b: &Candidate<'_>) -> bool {
    !a.emails.is_disjoint(&b.emails) || (a.name.is_some() && a.name == b.name)
}

/// A person found by data: its index and how many addresses it shares (0 for a match by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DataMatch {
    /// The index the person was inserted under.
    pub(crate) index: usize,
    /// Shared normalised e-mail addresses; 0 when matched by name.
    pub(crate) shared: usize,
}

/// People indexed by their normalised addresses and name key. Insert in ascending index order: ties go to the
/// first inserted.
#[derive(Default)]
pub(crate) struct DataIndex<'a> {
    by_email: HashMap<&'a str, Vec<usize>>,
    by_name: HashMap<&'a str, Vec<usize>>,
}

impl<'a> DataIndex<'a> {
    /// Adds person `index` with the data of `person`.
    pub(crate) fn insert(&mut self, index: usize, person: &'a Candidate<'_>) {
        for email in person.emails.iter() {
            self.by_email.entry(email).or_default().push(index);
        }
        if let Some(name) = &person.name {
            self.by_name.entry(name).or_default().push(index);
        }
    }

    /// The person `contact` is by its data, if any.
    pub(crate) fn best(&self, contact: &Candidate<'_>) -> Option<DataMatch> {
        self.best_where(contact, |_| true)
    }

    /// The person `contact` is by its data among those `eligible` says may take it, if any (the same rule as
    /// [`DataIndex::best`] over fewer people).
    pub(crate) fn best_where(
        &self,
        contact: &Candidate<'_>,
        eligible: impl Fn(usize) -> bool,
    ) -> Option<DataMatch> {
        let mut overlap: BTreeMap<usize, usize> = BTreeMap::new();
        for email in contact.emails.iter() {
            for &i in self.by_email.get(email).into_iter().flatten() {
                if eligible(i) {
                    *overlap.entry(i).or_default() += 1;
                }
            }
        }
        let by_email = overlap.into_iter().fold(
            None,
            |best: Option<DataMatch>, (index, shared)| match best {
                Some(b) if shared <= b.shared => best,
                _ => Some(DataMatch { index, shared }),
            },
        );
        by_email.or_else(|| {
            let name = contact.name.as_deref()?;
            self.by_name
                .get(name)?
                .iter()
                .copied()
                .find(|&index| eligible(index))
                .map(|index| DataMatch { index, shared: 0 })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Contact, Mailbox};

    /// A contact whose id is its name (the phase tests' builder).
    fn contact(name: &str, emails: &[&str]) -> Contact {
        crate::sync::tests::contact(name, name, emails, 0)
    }

    #[test]
    fn most_shared_addresses_then_first_then_name_only_without_addresses() {
        let mailbox = Mailbox {
            id: "m".into(),
            upn: "m@x.com".into(),
        };
        let people = [
            contact("A", &["a@x.com"]),
            contact("B", &["a@x.com", "b@x.com"]),
            contact("C", &["a@x.com"]),
            contact("Max", &[]),
            contact("Max", &[]),
        ];
        let candidates: Vec<Candidate> =
            people.iter().map(|c| Candidate::new(&mailbox, c)).collect();
        let mut index = DataIndex::default();
        for (i, c) in candidates.iter().enumerate() {
            index.insert(i, c);
        }
        let best = |c: &Contact| index.best(&Candidate::new(&mailbox, c));
        let found = |index, shared| Some(DataMatch { index, shared });
        assert_eq!(best(&contact("x", &[" A@X.com", "b@x.com"])), found(1, 2));
        assert_eq!(best(&contact("x", &["a@x.com"])), found(0, 1));
        assert_eq!(best(&contact(" max", &[])), found(3, 0));
        assert_eq!(best(&contact("Max", &["z@x.com"])), None);
    }
}
