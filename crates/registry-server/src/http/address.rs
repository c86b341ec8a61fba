//! An instance's address as the protocols that show it apart from the URL read it: Consul's
//! `Address` and `Port`, Eureka's `hostName`, `ipAddr` and `port`.

use registry_api::Instance;

/// The scheme, host (an IPv6 address without brackets) and port (the scheme's when the URL
/// names none) of an instance's URL; empty and 0 for a URL that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlAddress {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl UrlAddress {
    pub fn of(instance: &Instance) -> Self {
        match url::Url::parse(&instance.url) {
            Ok(url) => Self {
                scheme: url.scheme().to_owned(),
                host: match url.host() {
                    Some(url::Host::Ipv6(v6)) => v6.to_string(),
                    Some(host) => host.to_string(),
                    None => String::new(),
                },
                port: url.port_or_known_default().unwrap_or(0),
            },
            Err(_) => Self {
                scheme: "http".to_owned(),
                host: String::new(),
                port: 0,
            },
        }
    }
}
