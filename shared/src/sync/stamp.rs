//! The script-compatible stamp in personal notes: reading, stripping and writing it.
//!
//! Why this exists: the PowerShell script this tool replaces keeps its only identity in personal notes
//! (`SyncId=<guid>;CreatedBy=<upn>` on one line, appended last; its newer version writes one tag per line and adds
//! `LastUpdatedAt`/`LastUpdatedBy`). Contacts it stamped must be recognised and adopted, and a mailbox owner's own
//! note text must survive every rewrite byte for byte (the script dropped blank lines and leaked notes between
//! mailboxes). So the stamp is parsed from whole *stamp lines* only, and the owner's text is everything else.
//!
//! Format written: the owner's text exactly as it was, then (if that text is non-empty) one line break, then the
//! stamp lines `SyncId=..`, `CreatedBy=..`, `LastUpdatedAt=..`, `LastUpdatedBy=..` joined by line breaks. The line
//! break is CRLF when the owner's text contains CRLF or no line break at all (Outlook's convention), LF otherwise.
//! [`user_text`] undoes exactly that, so `user_text(&compose(t, s)) == t` for every `t` without stamp lines.
//!
//! A stamp line is a line that, trimmed, consists only of `;`-separated `Tag = value` pairs whose tags are the four
//! above (case-insensitive, blanks around `=` allowed), with at least one pair, every value non-empty and a `SyncId`
//! value of 36 hex digits and dashes (the script's `(?i)SyncId\s*=\s*([0-9a-f-]{36})`). Text that merely mentions
//! `SyncId=` inside a sentence is the owner's text and is left alone (the script would have deleted that line).

use chrono::{DateTime, SecondsFormat, Utc};

use super::identity::SyncId;

/// What the notes stamp says about a contact. Every part is optional: old stamps carry only some of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotesStamp {
    /// `SyncId=<guid>`.
    pub sync_id: Option<SyncId>,
    /// `CreatedBy=<upn>`: the mailbox owner who created the person.
    pub created_by: Option<String>,
    /// `LastUpdatedAt=<utc ISO-8601>`, as written (kept verbatim: the tool never compares it).
    pub last_updated_at: Option<String>,
    /// `LastUpdatedBy=<upn>`: whose edit the data last came from.
    pub last_updated_by: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tag {
    SyncId,
    CreatedBy,
    LastUpdatedAt,
    LastUpdatedBy,
}

impl Tag {
    fn from_key(key: &str) -> Option<Tag> {
        let key = key.trim();
        [
            ("SyncId", Tag::SyncId),
            ("CreatedBy", Tag::CreatedBy),
            ("LastUpdatedAt", Tag::LastUpdatedAt),
            ("LastUpdatedBy", Tag::LastUpdatedBy),
        ]
        .into_iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(key))
        .map(|(_, tag)| tag)
    }
}

/// Whether `value` has the shape the script's regex accepts for a sync id: 36 hex digits and dashes.
fn is_guid_shape(value: &str) -> bool {
    value.len() == 36 && value.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// Parses one line (terminator excluded) as a stamp line; `None` when it is owner text.
fn parse_stamp_line(line: &str) -> Option<Vec<(Tag, &str)>> {
    let mut pairs = Vec::new();
    for segment in line.trim().split(';') {
        if segment.trim().is_empty() {
            continue;
        }
        let (key, value) = segment.split_once('=')?;
        let tag = Tag::from_key(key)?;
        let value = value.trim();
        if value.is_empty() || (tag == Tag::SyncId && !is_guid_shape(value)) {
            return None;
        }
        pairs.push((tag, value));
    }
    if pairs.is_empty() {
        None
    } else {
        Some(pairs)
    }
}

/// Splits text into lines that keep their terminator (`\n`, with any `\r` before it); the last may have none.
fn lines_with_terminators(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive('\n')
}

/// A line without its terminator.
fn line_content(line: &str) -> &str {
    let line = line.strip_suffix('\n').unwrap_or(line);
    line.strip_suffix('\r').unwrap_or(line)
}

impl NotesStamp {
    /// Reads the stamp from personal notes (both the one-line and the one-tag-per-line form). When a tag occurs more
    /// than once, the last occurrence wins (the script appends its stamp last).
    pub fn parse(notes: Option<&str>) -> NotesStamp {
        let mut stamp = NotesStamp::default();
        for line in lines_with_terminators(notes.unwrap_or("")) {
            let Some(pairs) = parse_stamp_line(line_content(line)) else {
                continue;
            };
            for (tag, value) in pairs {
                match tag {
                    Tag::SyncId => stamp.sync_id = SyncId::parse(value),
                    Tag::CreatedBy => stamp.created_by = Some(value.to_owned()),
                    Tag::LastUpdatedAt => stamp.last_updated_at = Some(value.to_owned()),
                    Tag::LastUpdatedBy => stamp.last_updated_by = Some(value.to_owned()),
                }
            }
        }
        stamp
    }

    /// Whether no part is set.
    pub fn is_empty(&self) -> bool {
        self.sync_id.is_none()
            && self.created_by.is_none()
            && self.last_updated_at.is_none()
            && self.last_updated_by.is_none()
    }

    /// The stamp lines, in the order written, without line breaks.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(id) = &self.sync_id {
            lines.push(format!("SyncId={id}"));
        }
        for (tag, value) in [
            ("CreatedBy", &self.created_by),
            ("LastUpdatedAt", &self.last_updated_at),
            ("LastUpdatedBy", &self.last_updated_by),
        ] {
            // A value is written on one line and must not be able to end the pair early.
            if let Some(value) = value
                .as_deref()
                .map(|v| v.replace([';', '\r', '\n'], " "))
                .filter(|v| !v.trim().is_empty())
            {
                lines.push(format!("{tag}={}", value.trim()));
            }
        }
        lines
    }
}

/// Formats a time the way the stamp writes it: UTC ISO-8601 with seconds and `Z`.
pub fn format_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Whether the notes contain at least one stamp line.
pub fn has_stamp_lines(notes: &str) -> bool {
    lines_with_terminators(notes).any(|line| parse_stamp_line(line_content(line)).is_some())
}

/// The line break [`compose`] puts between owner text and stamp for this owner text.
fn separator_for(user_text: &str) -> &'static str {
    if user_text.contains("\r\n") || !user_text.contains('\n') {
        "\r\n"
    } else {
        "\n"
    }
}

/// The owner's own text: the notes without stamp lines (either form, anywhere). When the stamp lines ended the
/// notes, the one line break [`compose`] put before them is removed too, so the owner's text comes back byte for
/// byte. Notes without stamp lines are returned unchanged.
pub fn user_text(notes: &str) -> String {
    let lines: Vec<&str> = lines_with_terminators(notes).collect();
    let is_stamp: Vec<bool> = lines
        .iter()
        .map(|line| parse_stamp_line(line_content(line)).is_some())
        .collect();
    if !is_stamp.contains(&true) {
        return notes.to_owned();
    }
    // Stamps are "trailing" when the last line with any non-blank content is a stamp line; blank lines after it
    // (a normalising server might add one) belong to the stamp block.
    let last_content = lines
        .iter()
        .rposition(|line| !line_content(line).trim().is_empty());
    let trailing_from = match last_content {
        Some(i) if is_stamp[i] => Some(i + 1),
        _ => None,
    };
    let mut out = String::with_capacity(notes.len());
    for (i, line) in lines.iter().enumerate() {
        if is_stamp[i] || trailing_from.is_some_and(|from| i >= from) {
            continue;
        }
        out.push_str(line);
    }
    if trailing_from.is_some() {
        out.truncate(strip_separator(&out).len());
    }
    out
}

/// Removes the separator [`compose`] would have appended to some owner text `t` to produce `with_separator`.
fn strip_separator(with_separator: &str) -> &str {
    if let Some(candidate) = with_separator.strip_suffix("\r\n") {
        if separator_for(candidate) == "\r\n" {
            return candidate;
        }
    }
    if let Some(candidate) = with_separator.strip_suffix('\n') {
        if separator_for(candidate) == "\n" {
            return candidate;
        }
    }
    // Not produced by `compose` (e.g. old-script notes ending in a stamp with nothing before it): keep as is.
    with_separator
}

/// Notes made of the owner's text (kept exactly) followed by the stamp lines. An empty stamp gives the text back.
pub fn compose(user_text: &str, stamp: &NotesStamp) -> String {
    let lines = stamp.lines();
    if lines.is_empty() {
        return user_text.to_owned();
    }
    let separator = separator_for(user_text);
    let body = lines.join(separator);
    if user_text.is_empty() {
        body
    } else {
        format!("{user_text}{separator}{body}")
    }
}

/// Rewrites the stamp in existing notes: strips every stamp line (either form) and appends `stamp`.
pub fn restamp(notes: Option<&str>, stamp: &NotesStamp) -> String {
    compose(&user_text(notes.unwrap_or("")), stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

    fn stamp() -> NotesStamp {
        NotesStamp {
            sync_id: SyncId::parse(ID),
            created_by: Some("ann@contoso.com".into()),
            last_updated_at: Some("2024-05-01T10:00:00Z".into()),
            last_updated_by: Some("bob@contoso.com".into()),
        }
    }

    #[test]
    fn reads_the_script_one_line_form() {
        let notes = format!(
            "call after 5\r\nSyncId = {};CreatedBy=ann@contoso.com",
            ID.to_uppercase()
        );
        let parsed = NotesStamp::parse(Some(&notes));
        assert_eq!(parsed.sync_id.as_ref().map(SyncId::as_str), Some(ID));
        assert_eq!(parsed.created_by.as_deref(), Some("ann@contoso.com"));
        assert_eq!(user_text(&notes), "call after 5");
    }

    #[test]
    fn reads_the_one_tag_per_line_form() {
        let notes = compose("hello\nworld", &stamp());
        assert_eq!(
            notes,
            format!(
                "hello\nworld\nSyncId={ID}\nCreatedBy=ann@contoso.com\nLastUpdatedAt=2024-05-01T10:00:00Z\nLastUpdatedBy=bob@contoso.com"
            )
        );
        assert_eq!(NotesStamp::parse(Some(&notes)), stamp());
        assert_eq!(user_text(&notes), "hello\nworld");
    }

    #[test]
    fn mentions_inside_a_sentence_are_owner_text() {
        let notes = "remember: SyncId=abc is not ours";
        assert!(NotesStamp::parse(Some(notes)).is_empty());
        assert_eq!(user_text(notes), notes);
        let bad_guid = "SyncId=not-a-guid";
        assert!(!has_stamp_lines(bad_guid));
    }

    #[test]
    fn round_trips_edge_cases() {
        for text in [
            "", "\r\n", "\n", "a", "a\r\n", "a\n", "a\r", "a\nb\r", "a\r\nb\r", "\r", " ", "x\n\n",
        ] {
            let notes = compose(text, &stamp());
            assert_eq!(user_text(&notes), text, "{text:?} -> {notes:?}");
            assert_eq!(user_text(&restamp(Some(&notes), &stamp())), text);
        }
    }

    #[test]
    fn values_cannot_break_the_format() {
        let mut s = stamp();
        s.created_by = Some("evil;SyncId=x\r\nmore".into());
        let notes = compose("t", &s);
        let parsed = NotesStamp::parse(Some(&notes));
        assert_eq!(parsed.sync_id, s.sync_id);
        assert_eq!(user_text(&notes), "t");
    }
}
