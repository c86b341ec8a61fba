//! Property tests of the validation every request goes through: service names, instance
//! ids, URLs, check targets and durations, each against an independent statement of its
//! rule, on generated input (valid, invalid and arbitrary).

use std::time::Duration;

use proptest::prelude::*;
use registry_api::{Check, InstanceId, ServiceName, format_duration, parse_duration, validate_url};

/// The service name rule (a DNS label, docs/api.md, Services), stated on its own.
fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    let inner_ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let end_ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(inner_ok)
        && bytes.first().is_some_and(end_ok)
        && bytes.last().is_some_and(end_ok)
}

/// The instance id rule, stated on its own.
fn is_instance_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && s != "."
        && s != ".."
}

/// Text close to the rules: mostly allowed characters, some that are not.
fn near_names() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-z0-9A-Z._ /-]{0,70}").expect("regex")
}

fn hosts() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::string::string_regex("[a-z][a-z0-9-]{0,20}(\\.[a-z][a-z0-9-]{0,10}){0,3}")
            .expect("regex")
            // A label starting `xn--` is punycode, a host only when it decodes (`xn--` alone
            // does not, and URLs with it are rightly refused).
            .prop_filter("no undecodable punycode label", |host| {
                !host.split('.').any(|label| label.starts_with("xn--"))
            }),
        (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
    ]
}

fn urls() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("http"), Just("https")],
        hosts(),
        proptest::option::of(1u16..),
        proptest::string::string_regex("(/[A-Za-z0-9._~-]{0,12}){0,4}").expect("regex"),
    )
        .prop_map(|(scheme, host, port, path)| match port {
            Some(port) => format!("{scheme}://{host}:{port}{path}"),
            None => format!("{scheme}://{host}{path}"),
        })
}

proptest! {
    #[test]
    fn service_names_are_accepted_exactly_when_they_are_dns_labels(raw in near_names()) {
        prop_assert_eq!(ServiceName::parse(&raw).is_ok(), is_dns_label(&raw), "{:?}", raw);
    }

    #[test]
    fn every_dns_label_is_a_service_name(
        raw in proptest::string::string_regex("[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?").expect("regex")
    ) {
        let name = ServiceName::parse(&raw).expect("a DNS label is a service name");
        prop_assert_eq!(name.as_str(), raw.as_str());
    }

    #[test]
    fn instance_ids_are_accepted_exactly_by_their_rule(raw in near_names()) {
        prop_assert_eq!(InstanceId::parse(&raw).is_ok(), is_instance_id(&raw), "{:?}", raw);
    }

    #[test]
    fn sanitized_ids_are_valid_ids(raw in any::<String>()) {
        if let Ok(id) = InstanceId::sanitized(&raw) {
            prop_assert!(is_instance_id(id.as_str()), "{:?} -> {:?}", raw, id.as_str());
        }
    }

    #[test]
    fn http_urls_with_a_host_are_accepted(url in urls()) {
        prop_assert!(validate_url(&url).is_ok(), "{}", url);
    }

    #[test]
    fn urls_with_user_info_are_refused(url in urls(), user in "[a-z]{1,8}") {
        let with_user = url.replacen("://", &format!("://{user}@"), 1);
        prop_assert!(validate_url(&with_user).is_err(), "{}", with_user);
    }

    #[test]
    fn urls_with_other_schemes_or_spaces_are_refused(
        url in urls(),
        scheme in "(ftp|file|ws|gopher)",
        at in 0usize..40,
    ) {
        let other = format!("{scheme}{}", &url[url.find("://").expect("scheme")..]);
        prop_assert!(validate_url(&other).is_err(), "{}", other);
        let mut spaced = url.clone();
        spaced.insert(at.min(url.len()), ' ');
        prop_assert!(validate_url(&spaced).is_err(), "{:?}", spaced);
    }

    #[test]
    fn url_validation_never_panics(raw in any::<String>()) {
        let _ = validate_url(&raw);
    }

    /// A check can only reach the instance it belongs to, whatever its path says.
    #[test]
    fn a_check_target_is_always_the_instances_own_origin(
        url in urls(),
        path in "/[A-Za-z0-9./?=&%@:_-]{0,40}",
    ) {
        let check = Check {
            http: Some(path.clone()),
            tcp: None,
            interval_seconds: 5,
            timeout_seconds: 2,
            expect_json: None,
        };
        let base = url::Url::parse(&url).expect("generated URLs parse");
        if let Some(target) = check.target(&url) {
            prop_assert_eq!(target.scheme(), base.scheme());
            prop_assert_eq!(target.host_str(), base.host_str());
            prop_assert_eq!(target.port_or_known_default(), base.port_or_known_default());
        }
    }

    #[test]
    fn formatted_durations_parse_back(millis in 0u64..10_000_000_000) {
        let duration = Duration::from_millis(millis);
        prop_assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
    }

    #[test]
    fn whole_numbers_are_seconds(secs in 0u64..1_000_000_000) {
        prop_assert_eq!(parse_duration(&secs.to_string()), Ok(Duration::from_secs(secs)));
    }

    #[test]
    fn duration_parsing_never_panics(raw in "[0-9a-z ]{0,30}|\\PC{0,30}") {
        let _ = parse_duration(&raw);
    }
}
