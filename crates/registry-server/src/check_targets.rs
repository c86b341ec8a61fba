//! Where active checks may connect. A check already reaches only its instance's own URL
//! (`registry_api::Check::target`); `REGISTRY_CHECK_ALLOWED_NETWORKS` narrows that to the
//! networks the operator names, so that a registration cannot point the registry's checks
//! at addresses it must not probe (a cloud metadata endpoint, the database, the control
//! plane). Host names are judged after they resolve, on every check, so a DNS answer
//! cannot lead around the list.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// The allowed networks; empty allows every address.
#[derive(Debug, Clone, Default)]
pub struct AllowedNetworks(Arc<Vec<IpNet>>);

impl AllowedNetworks {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(Arc::new(networks))
    }

    /// Whether the list restricts anything.
    pub fn is_restricted(&self) -> bool {
        !self.0.is_empty()
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        !self.is_restricted() || self.0.iter().any(|network| network.contains(&ip))
    }

    /// For a URL whose host is an address (no resolution happens): whether it may be
    /// reached. Names are judged by the resolver instead.
    pub fn check_address(&self, url: &Url) -> Result<(), String> {
        let ip = match url.host() {
            Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => return Ok(()),
        };
        if self.allows(ip) {
            Ok(())
        } else {
            Err(format!(
                "{ip} is outside REGISTRY_CHECK_ALLOWED_NETWORKS; the check is not sent"
            ))
        }
    }
}

/// Resolves names as the system does, then keeps only allowed addresses; none left is an
/// error, and the check fails with it.
impl Resolve for AllowedNetworks {
    fn resolve(&self, name: Name) -> Resolving {
        let allowed = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| allowed.allows(addr.ip()))
                .collect();
            if resolved.is_empty() {
                return Err(format!(
                    "{host} resolves to no address inside REGISTRY_CHECK_ALLOWED_NETWORKS"
                )
                .into());
            }
            let addrs: Addrs = Box::new(resolved.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn networks(list: &[&str]) -> AllowedNetworks {
        AllowedNetworks::new(list.iter().map(|n| n.parse().expect("cidr")).collect())
    }

    #[test]
    fn an_empty_list_allows_everything() {
        let any = AllowedNetworks::default();
        assert!(!any.is_restricted());
        assert!(any.allows("169.254.169.254".parse().expect("ip")));
    }

    #[test]
    fn only_addresses_inside_the_networks_are_allowed() {
        let allowed = networks(&["10.0.0.0/8", "fd00::/8"]);
        assert!(allowed.allows("10.1.2.3".parse().expect("ip")));
        assert!(allowed.allows("fd12::1".parse().expect("ip")));
        assert!(!allowed.allows("169.254.169.254".parse().expect("ip")));
        assert!(!allowed.allows("127.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn address_urls_are_judged_without_resolving() {
        let allowed = networks(&["10.0.0.0/8"]);
        let url = |raw: &str| Url::parse(raw).expect("url");
        assert!(
            allowed
                .check_address(&url("http://10.0.0.7:8080/health"))
                .is_ok()
        );
        assert!(
            allowed
                .check_address(&url("http://169.254.169.254/latest"))
                .is_err()
        );
        assert!(allowed.check_address(&url("http://[::1]:80/")).is_err());
        // Names are left to the resolver.
        assert!(
            allowed
                .check_address(&url("http://sum.default.svc/"))
                .is_ok()
        );
    }

    #[tokio::test]
    async fn names_resolving_outside_the_networks_fail() {
        let allowed = networks(&["10.0.0.0/8"]);
        let name: Name = "localhost".parse().expect("name");
        assert!(allowed.resolve(name).await.is_err());
        let loopback = networks(&["127.0.0.0/8", "::1/128"]);
        let name: Name = "localhost".parse().expect("name");
        let addrs: Vec<SocketAddr> = loopback.resolve(name).await.expect("resolves").collect();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
