//! Which services a read answers, and which page of them: the rules `GET /v1/services`
//! and `GET /v1/status` share, so that a registry of a hundred thousand services is read a
//! page at a time, searched on the server, and never copied whole for one answer.
//!
//! Services are paged in name order. A cursor carries the last name of the page before,
//! and the next page is the services after that name: pages cover disjoint ranges of
//! names, so a service that exists for the whole walk is answered exactly once, and
//! services added or removed meanwhile never make one appear twice (one added behind the
//! cursor is simply not seen by this walk).

use std::collections::BTreeSet;
use std::ops::Bound;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use registry_api::ServiceName;

/// Page size when a cursor comes without a `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest `limit`.
pub const MAX_LIMIT: usize = 1_000;

/// The first byte of every cursor: the format it was written in.
const CURSOR_VERSION: u8 = 1;

/// Where a page starts: after the service named here. Opaque to clients (base64url of a
/// version byte and the name), so its format may change with its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    after: String,
}

impl Cursor {
    pub fn after(name: &str) -> Self {
        Self {
            after: name.to_owned(),
        }
    }

    /// The cursor as a client passes it back.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(1 + self.after.len());
        bytes.push(CURSOR_VERSION);
        bytes.extend_from_slice(self.after.as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads a cursor this registry wrote, or says why it is not one.
    pub fn decode(raw: &str) -> Result<Self, String> {
        let malformed = || format!("'{raw}' is not a cursor; pass back a `next_cursor` as given");
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| malformed())?;
        let Some((&CURSOR_VERSION, name)) = bytes.split_first() else {
            return Err(malformed());
        };
        let name = std::str::from_utf8(name).map_err(|_| malformed())?;
        ServiceName::parse(name).map_err(|_| malformed())?;
        Ok(Self::after(name))
    }
}

/// A page size within 1..=[`MAX_LIMIT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(usize);

impl Limit {
    pub fn parse(raw: &str) -> Result<Self, String> {
        raw.parse::<usize>()
            .ok()
            .filter(|limit| (1..=MAX_LIMIT).contains(limit))
            .map(Self)
            .ok_or_else(|| format!("'{raw}' is not a page size (1 to {MAX_LIMIT})"))
    }
}

/// Part of a service name to search for. Names are lower case, so the search is
/// case-insensitive: it is lower-cased here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameFilter(String);

impl NameFilter {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let text = raw.to_ascii_lowercase();
        let possible = (1..=ServiceName::MAX_LEN).contains(&text.len())
            && text.bytes().all(ServiceName::allows);
        if possible {
            Ok(Self(text))
        } else {
            Err(format!(
                "'{raw}' cannot be part of a service name: 1 to 63 of a-z, 0-9 and -"
            ))
        }
    }

    fn matches(&self, name: &str) -> bool {
        name.contains(self.0.as_str())
    }

    /// The lower-cased text searched for (as the store searches for it).
    pub fn text(&self) -> &str {
        &self.0
    }
}

/// Which services a read answers: one by name, those whose name contains some text, and
/// (when paged) at most `limit` of them after a cursor.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub service: Option<String>,
    pub name: Option<NameFilter>,
    pub after: Option<Cursor>,
    /// `None`: every service selected, in one answer.
    pub limit: Option<usize>,
}

impl Selection {
    /// Every service, or the one named.
    pub fn only(service: Option<&str>) -> Self {
        Self {
            service: service.map(str::to_owned),
            ..Self::default()
        }
    }

    /// From a read's parameters: paged when it gives a `limit` or a `cursor`.
    pub fn new(
        service: Option<&str>,
        name: Option<NameFilter>,
        limit: Option<Limit>,
        after: Option<Cursor>,
    ) -> Self {
        let limit = match (limit, &after) {
            (Some(Limit(limit)), _) => Some(limit),
            (None, Some(_)) => Some(DEFAULT_LIMIT),
            (None, None) => None,
        };
        Self {
            service: service.map(str::to_owned),
            name,
            after,
            limit,
        }
    }

    /// The name a page starts after, when it has a cursor.
    pub fn after_name(&self) -> Option<&str> {
        self.after.as_ref().map(|cursor| cursor.after.as_str())
    }

    /// The selected services for which `keep` holds, in name order: one page of them when
    /// paged, with the cursor of the next page when more follow. Walks `names` from the
    /// cursor on, and no further than the page, finding each one's value with `value_of`.
    pub fn page<'a, V>(
        &self,
        names: &'a BTreeSet<String>,
        value_of: impl Fn(&str) -> Option<&'a V>,
        keep: impl Fn(&V) -> bool,
    ) -> Page<'a, V> {
        let mut selected = self
            .after_the_cursor(names)
            .filter(|name| self.name.as_ref().is_none_or(|filter| filter.matches(name)))
            .filter_map(|name| Some((name.as_str(), value_of(name)?)))
            .filter(|(_, value)| keep(value));
        let Some(limit) = self.limit else {
            return Page {
                entries: selected.collect(),
                next: None,
            };
        };
        let entries: Vec<(&str, &V)> = selected.by_ref().take(limit).collect();
        let more = selected.next().is_some();
        let next = entries
            .last()
            .filter(|_| more)
            .map(|(name, _)| Cursor::after(name));
        Page { entries, next }
    }

    /// The names after the cursor (all without one), or only the named service's.
    fn after_the_cursor<'a>(
        &self,
        names: &'a BTreeSet<String>,
    ) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        let after = self.after.as_ref().map(|cursor| cursor.after.as_str());
        match &self.service {
            Some(name) => {
                let past_the_cursor = after.is_none_or(|after| after < name.as_str());
                let named = names.get(name.as_str());
                Box::new(named.filter(|_| past_the_cursor).into_iter())
            }
            None => Box::new(names.range::<str, _>((
                after.map_or(Bound::Unbounded, Bound::Excluded),
                Bound::Unbounded,
            ))),
        }
    }
}

/// One page of a selection: its entries in name order, and where the next page starts.
#[derive(Debug)]
pub struct Page<'a, V> {
    pub entries: Vec<(&'a str, &'a V)>,
    pub next: Option<Cursor>,
}

impl<V> Page<'_, V> {
    /// The next page's cursor as the answer carries it.
    pub fn next_cursor(&self) -> Option<String> {
        self.next.as_ref().map(Cursor::encode)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_cursor_reads_back_as_written() {
        for name in ["a", "sum", "concat-2", &"x".repeat(63)] {
            let cursor = Cursor::after(name);
            let encoded = cursor.encode();
            assert!(
                encoded
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "URL-safe: {encoded}"
            );
            assert_eq!(Cursor::decode(&encoded), Ok(cursor));
        }
    }

    #[test]
    fn a_malformed_cursor_is_refused() {
        let with_version = |version: u8, name: &[u8]| {
            let mut bytes = vec![version];
            bytes.extend_from_slice(name);
            URL_SAFE_NO_PAD.encode(bytes)
        };
        for raw in [
            String::new(),
            "!!!".to_owned(),
            "c3Vt=".to_owned(),
            with_version(2, b"sum"),
            with_version(CURSOR_VERSION, b""),
            with_version(CURSOR_VERSION, b"Not A Name"),
            with_version(CURSOR_VERSION, &[0xff, 0xfe]),
        ] {
            let error = Cursor::decode(&raw).expect_err(&raw);
            assert!(error.contains("is not a cursor"), "{raw}: {error}");
        }
    }

    #[test]
    fn limits_are_one_to_the_maximum() {
        assert_eq!(Limit::parse("1"), Ok(Limit(1)));
        assert_eq!(Limit::parse("1000"), Ok(Limit(MAX_LIMIT)));
        for raw in ["0", "1001", "-1", "", "ten", "1.5"] {
            assert!(Limit::parse(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn a_name_filter_is_lower_cased_and_refuses_what_no_name_holds() {
        assert_eq!(NameFilter::parse("SuM"), Ok(NameFilter("sum".into())));
        for raw in ["", "a b", "a_b", "é", &"a".repeat(64)] {
            assert!(NameFilter::parse(raw).is_err(), "{raw}");
        }
    }

    /// The names on `selection`'s page of a map by service name, and the next cursor.
    fn page(
        selection: &Selection,
        map: &BTreeMap<String, u32>,
        keep: impl Fn(&u32) -> bool,
    ) -> (Vec<String>, Option<Cursor>) {
        let names: BTreeSet<String> = map.keys().cloned().collect();
        let page = selection.page(&names, |name| map.get(name), keep);
        let on_page = page.entries.iter().map(|(n, _)| (*n).to_owned()).collect();
        (on_page, page.next)
    }

    fn services(names: &[&str]) -> BTreeMap<String, u32> {
        names.iter().map(|n| ((*n).to_owned(), 1)).collect()
    }

    #[test]
    fn pages_walk_every_kept_service_once_in_name_order() {
        let mut map = services(&["a", "b", "c", "d", "e"]);
        map.insert("empty".into(), 0);
        let mut selection = Selection::new(None, None, Limit::parse("2").ok(), None);
        let mut walked = Vec::new();
        loop {
            let (names, next) = page(&selection, &map, |v| *v > 0);
            walked.extend(names);
            match next {
                Some(next) => selection.after = Some(next),
                None => break,
            }
        }
        assert_eq!(walked, ["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn the_last_page_has_no_next_cursor() {
        let map = services(&["a", "b"]);
        let selection = Selection::new(None, None, Limit::parse("2").ok(), None);
        let (names, next) = page(&selection, &map, |_| true);
        assert_eq!((names.len(), next), (2, None));
    }

    #[test]
    fn a_walk_survives_changes_between_pages() {
        let mut map = services(&["a", "b", "c", "d"]);
        let selection = Selection::new(None, None, Limit::parse("2").ok(), None);
        let (first, after) = page(&selection, &map, |_| true);
        assert_eq!(first, ["a", "b"]);
        // The last name answered goes, one comes before the cursor and one after it.
        map.remove("b");
        map.insert("aa".into(), 1);
        map.insert("cc".into(), 1);
        let (second, _) = page(&Selection { after, ..selection }, &map, |_| true);
        assert_eq!(second, ["c", "cc"]);
    }

    #[test]
    fn the_name_filter_and_one_service_narrow_the_page() {
        let map = services(&["billing", "bill-api", "sum", "summary"]);
        let names = |selection: Selection| page(&selection, &map, |_| true).0;
        let filter = NameFilter::parse("BILL").ok();
        assert_eq!(
            names(Selection::new(None, filter, None, None)),
            ["bill-api", "billing"]
        );
        assert_eq!(names(Selection::only(Some("sum"))), ["sum"]);
        let past = Selection::new(Some("sum"), None, None, Some(Cursor::after("sum")));
        assert!(names(past).is_empty());
        let before = Selection::new(Some("sum"), None, None, Some(Cursor::after("bill")));
        assert_eq!(names(before), ["sum"]);
    }
}
