//! Eureka's names onto ours and back (docs/eureka.md, Names and ids).
//!
//! App names are case-insensitive in Eureka and upper case on the wire; our service names
//! are lower-case DNS labels. Instance ids are free text in Eureka (`10.0.0.1:sum:8080`,
//! `HOST.example:SUM:8080`) and 1-128 of `[A-Za-z0-9._-]` in the model, so an id is escaped
//! reversibly: `_` and every byte outside `[A-Za-z0-9.-]` become `_` and two lower-case
//! hex digits (`:` is `_3a`, `_` is `_5f`). A Eureka client sees exactly the id it sent.

use registry_api::{InstanceId, ServiceName};

/// The service an app name names (`SUM` -> `sum`), or why it cannot be one.
pub fn service_of_app(app: &str) -> Result<ServiceName, String> {
    ServiceName::parse(&app.to_ascii_lowercase())
        .map_err(|m| format!("app name '{app}' is not a valid service name: it {m}"))
}

/// A service's app name on the wire (`sum` -> `SUM`).
pub fn app_of_service(service: &str) -> String {
    service.to_ascii_uppercase()
}

fn kept(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-')
}

/// The model id of a Eureka instance id.
pub fn model_id(eureka_id: &str) -> Result<InstanceId, String> {
    let mut out = String::with_capacity(eureka_id.len());
    for byte in eureka_id.bytes() {
        if kept(byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("_{byte:02x}"));
        }
    }
    InstanceId::parse(&out).map_err(|m| {
        format!("instance id '{eureka_id}' cannot be kept: escaped as '{out}', it {m}")
    })
}

/// The Eureka id of a model id: the escapes undone. An id registered through another API
/// may hold a `_` that starts no escape: it is kept as it is.
pub fn eureka_id(model_id: &str) -> String {
    let bytes = model_id.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'_')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .filter(|hex| {
                hex.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|byte| !kept(*byte));
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    // Escapes only ever stand for the bytes of a UTF-8 id; anything else is kept as sent.
    String::from_utf8(out).unwrap_or_else(|_| model_id.to_owned())
}

/// The model ids a Eureka id may name: its escaped form, then the id itself when it is a
/// valid model id that was not escaped (an instance registered through v1 or Consul with a
/// `_` of its own).
pub fn candidates(eureka_id: &str) -> Vec<InstanceId> {
    let mut out = Vec::new();
    if let Ok(id) = model_id(eureka_id) {
        out.push(id);
    }
    if let Ok(raw) = InstanceId::parse(eureka_id)
        && !out.contains(&raw)
        && self::eureka_id(raw.as_str()) == eureka_id
    {
        out.push(raw);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_are_case_insensitive() {
        assert_eq!(service_of_app("SUM").expect("valid").as_str(), "sum");
        assert_eq!(service_of_app("My-App").expect("valid").as_str(), "my-app");
        assert_eq!(app_of_service("sum"), "SUM");
        assert!(service_of_app("MY_APP").is_err());
        assert!(service_of_app("").is_err());
    }

    #[test]
    fn ids_real_clients_make_round_trip_exactly() {
        for id in [
            "10.0.0.1:sum:8080",
            "HOST.example.com:SUM:8080",
            "127.0.0.1:py-svc:9001",
            "i-0abc123",
            "my_host",
            "a_3a",
            "ünïcode:1",
            "with space/and%",
        ] {
            let model = model_id(id).expect("fits");
            assert_eq!(eureka_id(model.as_str()), id, "{id} via {model}");
            assert_eq!(candidates(id).first(), Some(&model));
        }
        assert_eq!(
            model_id("10.0.0.1:sum:8080").expect("fits").as_str(),
            "10.0.0.1_3asum_3a8080"
        );
    }

    #[test]
    fn ids_of_other_apis_are_shown_and_found_as_they_are() {
        assert_eq!(eureka_id("web-1"), "web-1");
        assert_eq!(eureka_id("my_id"), "my_id");
        let found = candidates("my_id");
        assert!(found.iter().any(|id| id.as_str() == "my_id"), "{found:?}");
    }

    #[test]
    fn ids_that_cannot_fit_are_refused() {
        assert!(model_id("").is_err());
        assert!(model_id(".").is_err());
        assert!(model_id(&":".repeat(50)).is_err());
    }
}
