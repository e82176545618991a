//! Outbound network policy for the MCP client (SSRF protection).
//!
//! The daemon connects to MCP servers at URLs that arrive in requests, so a
//! caller could point it at addresses only the daemon can reach: the cloud
//! metadata service (which hands out credentials), loopback services, or the
//! private network. This module decides which addresses are reachable and
//! enforces that decision at three points, because no single point is enough:
//!
//! * [`OutboundPolicy::check_url`] runs before connecting and gives the caller
//!   a clear error. On its own it is not enough: a name can resolve to a
//!   public address now and to `127.0.0.1` a moment later (DNS rebinding).
//! * [`OutboundPolicy::resolver`] is installed as reqwest's DNS resolver, so
//!   the addresses actually connected to are the ones that were checked.
//! * [`OutboundPolicy::redirect_policy`] checks redirect targets, because
//!   reqwest never calls the resolver for an IP-literal host: without it a
//!   public server could answer `302 Location: http://169.254.169.254/`.
//!
//! Rules, in order of precedence:
//! 1. always refused, whatever the operator allows: cloud metadata and
//!    link-local, unspecified, multicast and broadcast addresses, and the
//!    metadata host names;
//! 2. `--outbound-deny` entries are refused;
//! 3. `--outbound-allow` entries are allowed;
//! 4. loopback, private, carrier-grade NAT, unique-local, documentation,
//!    benchmarking and reserved ranges are refused;
//! 5. everything else (public addresses) is allowed.
//!
//! IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`) and NAT64
//! (`64:ff9b::a.b.c.d`) IPv6 addresses are turned into the IPv4 address they
//! reach before any rule is applied, so they cannot be used to dodge an IPv4
//! rule.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use url::{Host, Url};

/// Redirects followed at most per request.
const MAX_REDIRECTS: usize = 5;

const METADATA: &str = "cloud metadata endpoints are never reachable";
const LINK_LOCAL: &str = "link-local addresses (169.254.0.0/16, fe80::/10) are never reachable; cloud metadata endpoints live there";
const UNSPECIFIED: &str = "unspecified addresses (0.0.0.0/8, ::) are never reachable";
const MULTICAST: &str = "multicast addresses (224.0.0.0/4, ff00::/8) are never reachable";
const BROADCAST: &str = "the broadcast address 255.255.255.255 is never reachable";
const LOOPBACK: &str = "loopback (127.0.0.0/8, ::1) is denied unless --outbound-allow lists it";

/// Rule 1: refused whatever `--outbound-allow` says. The most specific entry
/// comes first so the refusal names the most useful rule.
const ALWAYS_REFUSED: &[(IpNet, &str)] = &[
    (v4(169, 254, 169, 254, 32), METADATA),
    (v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128), METADATA),
    (v4(169, 254, 0, 0, 16), LINK_LOCAL),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), LINK_LOCAL),
    (v4(0, 0, 0, 0, 8), UNSPECIFIED),
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), UNSPECIFIED),
    (v4(224, 0, 0, 0, 4), MULTICAST),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), MULTICAST),
    (v4(255, 255, 255, 255, 32), BROADCAST),
];

/// Host names refused before any DNS lookup, along with their subdomains.
/// They resolve to the metadata service, and looking them up at all would
/// already tell a DNS observer what the caller was trying.
const REFUSED_NAMES: &[&str] = &["metadata.google.internal", "metadata.goog"];

/// Rule 4: refused unless `--outbound-allow` lists them.
const DENIED_UNLESS_ALLOWED: &[(IpNet, &str)] = &[
    (v4(127, 0, 0, 0, 8), LOOPBACK),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), LOOPBACK),
    (
        v4(10, 0, 0, 0, 8),
        "private network 10.0.0.0/8 is denied unless --outbound-allow lists it",
    ),
    (
        v4(172, 16, 0, 0, 12),
        "private network 172.16.0.0/12 is denied unless --outbound-allow lists it",
    ),
    (
        v4(192, 168, 0, 0, 16),
        "private network 192.168.0.0/16 is denied unless --outbound-allow lists it",
    ),
    (
        v4(100, 64, 0, 0, 10),
        "carrier-grade NAT 100.64.0.0/10 is denied unless --outbound-allow lists it",
    ),
    (
        v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        "IPv6 unique local fc00::/7 is denied unless --outbound-allow lists it",
    ),
    (
        v4(192, 0, 0, 0, 24),
        "IETF protocol assignments 192.0.0.0/24 are denied unless --outbound-allow lists them",
    ),
    (
        v4(192, 0, 2, 0, 24),
        "documentation range 192.0.2.0/24 is denied unless --outbound-allow lists it",
    ),
    (
        v4(198, 51, 100, 0, 24),
        "documentation range 198.51.100.0/24 is denied unless --outbound-allow lists it",
    ),
    (
        v4(203, 0, 113, 0, 24),
        "documentation range 203.0.113.0/24 is denied unless --outbound-allow lists it",
    ),
    (
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        "documentation range 2001:db8::/32 is denied unless --outbound-allow lists it",
    ),
    (
        v4(198, 18, 0, 0, 15),
        "benchmarking range 198.18.0.0/15 is denied unless --outbound-allow lists it",
    ),
    (
        v4(240, 0, 0, 0, 4),
        "reserved range 240.0.0.0/4 is denied unless --outbound-allow lists it",
    ),
];

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> IpNet {
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix))
}

const fn v6(s: [u16; 8], prefix: u8) -> IpNet {
    let ip = Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]);
    IpNet::V6(Ipv6Net::new_assert(ip, prefix))
}

/// Which addresses the MCP client may connect to. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    allow: Arc<[OperatorRule]>,
    deny: Arc<[OperatorRule]>,
}

/// One `--outbound-allow` / `--outbound-deny` entry.
#[derive(Debug)]
struct OperatorRule {
    net: IpNet,
    /// How the refusal names it, e.g. `--outbound-deny 10.0.0.0/8`.
    rule: String,
}

/// Why a target may not be contacted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{target} is refused by {}", describe_rule(.rule))]
pub struct Refusal {
    /// The address or host name refused, e.g. `127.0.0.1` or `localhost (127.0.0.1)`.
    pub target: String,
    /// The rule's text, or the operator entry (`--outbound-deny 10.0.0.0/8`).
    pub rule: String,
}

impl Refusal {
    /// Whether an operator could change this decision with a flag: cloud
    /// metadata, link-local, unspecified, multicast and broadcast addresses
    /// are refused whatever the flags say.
    pub fn overridable(&self) -> bool {
        self.rule != METADATA && !ALWAYS_REFUSED.iter().any(|(_, rule)| *rule == self.rule)
    }
}

fn describe_rule(rule: &str) -> String {
    if rule.starts_with("--outbound-") {
        rule.to_owned()
    } else {
        format!("the rule \"{rule}\"")
    }
}

/// The operator's configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{flag} {value:?} is not a CIDR (like 10.0.0.0/8) or an IP address: {reason}")]
    BadCidr {
        flag: &'static str,
        value: String,
        reason: String,
    },
}

impl OutboundPolicy {
    /// `allow`/`deny` are operator CIDRs (e.g. "127.0.0.0/8", "10.1.2.3/32", "::1/128"); a bare IP means /32 or /128.
    pub fn new(allow: &[String], deny: &[String]) -> Result<Self, PolicyError> {
        let allow = parse_rules("--outbound-allow", allow)?;
        for entry in allow.iter() {
            // Not an error (the entry still opens the rest of its range), but
            // the operator should know it cannot open the metadata service.
            if let Some((_, rule)) = ALWAYS_REFUSED
                .iter()
                .find(|(net, _)| overlaps(net, &entry.net))
            {
                tracing::warn!(
                    entry = %entry.rule,
                    "part of this range stays refused: {rule}"
                );
            }
        }
        Ok(Self {
            allow,
            deny: parse_rules("--outbound-deny", deny)?,
        })
    }

    /// The decision for one address: Ok or the rule that refuses it.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        let canonical = canonical_ip(ip);
        let refuse = |rule: &str| {
            Err(Refusal {
                target: ip.to_string(),
                rule: rule.to_owned(),
            })
        };
        if let Some((_, rule)) = ALWAYS_REFUSED.iter().find(|(n, _)| n.contains(&canonical)) {
            return refuse(rule);
        }
        if let Some(entry) = self.deny.iter().find(|e| e.net.contains(&canonical)) {
            return refuse(&entry.rule);
        }
        if self.allow.iter().any(|e| e.net.contains(&canonical)) {
            return Ok(());
        }
        if let Some((_, rule)) = DENIED_UNLESS_ALLOWED
            .iter()
            .find(|(n, _)| n.contains(&canonical))
        {
            return refuse(rule);
        }
        Ok(())
    }

    /// Checks a URL's host before connecting: always-refused names are refused
    /// without a lookup, an IP literal goes through [`Self::check_ip`], and a
    /// name is resolved (with the URL's port or the scheme's default) and
    /// every address must pass; a name resolving to nothing is refused too.
    ///
    /// This gives a clear early error; the [`Self::resolver`] is still needed
    /// because the name may resolve differently when reqwest connects.
    pub async fn check_url(&self, url: &Url) -> Result<(), Refusal> {
        let mut result = self.check_host_without_dns(url);
        if let (Ok(()), Some(Host::Domain(name))) = (&result, url.host()) {
            let port = url.port_or_known_default().unwrap_or(0);
            result = self.resolve_checked(name, port).await.map(drop);
        }
        if let Err(refusal) = &result {
            tracing::warn!(url = %url, refusal = %refusal, "outbound URL refused");
        }
        result
    }

    /// A reqwest DNS resolver enforcing the policy at connect time, so a name
    /// that is re-pointed (DNS rebinding) between [`Self::check_url`] and the
    /// connection still cannot reach a refused address. It refuses the name
    /// if any of its addresses is refused.
    ///
    /// reqwest skips the resolver for IP-literal hosts, and when a proxy is
    /// in use it resolves the proxy rather than the target: call
    /// [`Self::check_url`] first and build the client with [`Self::apply`]
    /// (which disables proxies).
    pub fn resolver(&self) -> Arc<dyn reqwest::dns::Resolve> {
        Arc::new(PolicyResolver(self.clone()))
    }

    /// A reqwest redirect policy that refuses a redirect to an IP literal the
    /// policy refuses or to an always-refused name (reqwest does not call the
    /// resolver for IP literals, so nothing else would stop
    /// `302 Location: http://169.254.169.254/`), and stops after 5 redirects.
    /// Redirects to other names are checked by the [`Self::resolver`].
    pub fn redirect_policy(&self) -> reqwest::redirect::Policy {
        let policy = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            // `previous` holds the original URL plus each redirect so far.
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match policy.check_host_without_dns(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refusal) => {
                    tracing::warn!(url = %attempt.url(), %refusal, "outbound redirect refused");
                    attempt.error(refusal)
                }
            }
        })
    }

    /// Installs [`Self::resolver`] and [`Self::redirect_policy`] on a client
    /// builder and turns off proxies (including `HTTP_PROXY`/`HTTPS_PROXY`
    /// from the environment), because with a proxy the target is resolved
    /// and connected by the proxy, out of this policy's reach.
    pub fn apply(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        builder
            .no_proxy()
            .dns_resolver(self.resolver())
            .redirect(self.redirect_policy())
    }

    /// Everything that can be decided from the URL alone.
    fn check_host_without_dns(&self, url: &Url) -> Result<(), Refusal> {
        match url.host() {
            Some(Host::Ipv4(ip)) => self.check_ip(ip.into()),
            Some(Host::Ipv6(ip)) => self.check_ip(ip.into()),
            Some(Host::Domain(name)) => refused_name(name).map_or(Ok(()), Err),
            None => Err(Refusal {
                target: url.to_string(),
                rule: "an outbound URL must name a host".to_owned(),
            }),
        }
    }

    /// Resolves `host` and returns its addresses if every one of them passes.
    async fn resolve_checked(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refusal> {
        if let Some(refusal) = refused_name(host) {
            return Err(refusal);
        }
        let unresolved = |rule: String| Refusal {
            target: host.to_owned(),
            rule,
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| unresolved(format!("host names must resolve (lookup failed: {e})")))?
            .collect();
        if addrs.is_empty() {
            return Err(unresolved(
                "host names must resolve to at least one address".to_owned(),
            ));
        }
        for addr in &addrs {
            self.check_ip(addr.ip()).map_err(|refusal| Refusal {
                target: format!("{host} ({})", addr.ip()),
                rule: refusal.rule,
            })?;
        }
        Ok(addrs)
    }
}

/// The reqwest resolver returned by [`OutboundPolicy::resolver`].
struct PolicyResolver(OutboundPolicy);

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest substitutes the URL's port or the scheme default.
            match policy.resolve_checked(&host, 0).await {
                Ok(addrs) => Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs),
                Err(refusal) => {
                    tracing::warn!(%refusal, "outbound connection refused at DNS resolution");
                    Err(refusal.into())
                }
            }
        })
    }
}

fn parse_rules(flag: &'static str, entries: &[String]) -> Result<Arc<[OperatorRule]>, PolicyError> {
    entries
        .iter()
        .map(|entry| {
            let text = entry.trim();
            let net = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|e| PolicyError::BadCidr {
                    flag,
                    value: entry.clone(),
                    reason: e.to_string(),
                })?;
            Ok(OperatorRule {
                net: canonical_net(net),
                rule: format!("{flag} {text}"),
            })
        })
        .collect()
}

/// The IPv4 address an IPv6 address really reaches, if it embeds one.
/// `::` and `::1` are IPv6's own unspecified and loopback addresses, not
/// IPv4-compatible forms of 0.0.0.0 and 0.0.0.1.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    let s = v6.segments();
    let [.., a, b, c, d] = v6.octets();
    let embeds_v4 = v6.to_ipv4_mapped().is_some()
        || (s[..6] == [0; 6] && !v6.is_unspecified() && !v6.is_loopback())
        || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if embeds_v4 {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    } else {
        ip
    }
}

/// An operator range written in an IPv4-embedding IPv6 form (say
/// `::ffff:10.0.0.0/104`) becomes the IPv4 range, since addresses are
/// compared in their IPv4 form.
fn canonical_net(net: IpNet) -> IpNet {
    let net = net.trunc();
    match (net, canonical_ip(net.network())) {
        (IpNet::V6(v6), IpAddr::V4(ip)) if v6.prefix_len() >= 96 => {
            v4_net(ip, v6.prefix_len() - 96)
        }
        _ => net,
    }
}

fn v4_net(ip: Ipv4Addr, prefix: u8) -> IpNet {
    // The prefix is at most 32 by construction, so this cannot fail.
    Ipv4Net::new(ip, prefix).map_or(IpNet::V4(Ipv4Net::from(ip)), IpNet::V4)
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The refusal for a metadata host name or one of its subdomains.
fn refused_name(host: &str) -> Option<Refusal> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let refused = REFUSED_NAMES.iter().any(|name| {
        host == *name
            || host
                .strip_suffix(name)
                .is_some_and(|prefix| prefix.ends_with('.'))
    });
    refused.then(|| Refusal {
        target: host,
        rule: METADATA.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn policy(allow: &[&str], deny: &[&str]) -> OutboundPolicy {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        OutboundPolicy::new(&owned(allow), &owned(deny)).expect("valid test policy")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    fn url(s: &str) -> Url {
        Url::parse(s).expect("test URL")
    }

    fn rule_of(p: &OutboundPolicy, addr: &str) -> Option<String> {
        p.check_ip(ip(addr)).err().map(|r| r.rule)
    }

    fn allow_loopback() -> OutboundPolicy {
        policy(&["127.0.0.0/8", "::1/128"], &[])
    }

    #[test]
    fn always_refused_ranges() {
        let p = policy(&[], &[]);
        for (addr, rule) in [
            ("169.254.169.254", METADATA),
            ("fd00:ec2::254", METADATA),
            ("169.254.1.1", LINK_LOCAL),
            ("fe80::1", LINK_LOCAL),
            ("0.0.0.0", UNSPECIFIED),
            ("0.1.2.3", UNSPECIFIED),
            ("::", UNSPECIFIED),
            ("224.0.0.1", MULTICAST),
            ("239.255.255.250", MULTICAST),
            ("ff02::1", MULTICAST),
            ("255.255.255.255", BROADCAST),
        ] {
            assert_eq!(rule_of(&p, addr).as_deref(), Some(rule), "{addr}");
        }
    }

    #[test]
    fn default_denied_ranges_and_public_addresses() {
        let p = policy(&[], &[]);
        for (addr, range) in [
            ("127.0.0.1", "127.0.0.0/8"),
            ("127.255.0.9", "127.0.0.0/8"),
            ("::1", "::1"),
            ("10.0.0.5", "10.0.0.0/8"),
            ("172.16.0.1", "172.16.0.0/12"),
            ("172.31.255.255", "172.16.0.0/12"),
            ("192.168.1.1", "192.168.0.0/16"),
            ("100.64.0.1", "100.64.0.0/10"),
            ("fd12:3456::1", "fc00::/7"),
            ("192.0.0.8", "192.0.0.0/24"),
            ("192.0.2.1", "192.0.2.0/24"),
            ("198.18.0.1", "198.18.0.0/15"),
            ("198.19.255.1", "198.18.0.0/15"),
            ("198.51.100.7", "198.51.100.0/24"),
            ("203.0.113.9", "203.0.113.0/24"),
            ("240.0.0.1", "240.0.0.0/4"),
            ("2001:db8::1", "2001:db8::/32"),
        ] {
            let rule = rule_of(&p, addr).unwrap_or_else(|| panic!("{addr} should be refused"));
            assert!(rule.contains(range), "{addr}: {rule}");
            assert!(
                rule.contains("unless --outbound-allow lists"),
                "{addr}: {rule}"
            );
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
        ] {
            assert_eq!(p.check_ip(ip(public)), Ok(()), "{public}");
        }
    }

    #[test]
    fn refusal_messages() {
        let p = policy(&[], &["10.0.0.0/8"]);
        let msg = |a: &str| p.check_ip(ip(a)).expect_err("refused").to_string();
        assert_eq!(
            msg("169.254.169.254"),
            r#"169.254.169.254 is refused by the rule "cloud metadata endpoints are never reachable""#
        );
        assert_eq!(
            msg("127.0.0.1"),
            r#"127.0.0.1 is refused by the rule "loopback (127.0.0.0/8, ::1) is denied unless --outbound-allow lists it""#
        );
        assert_eq!(
            msg("10.0.0.5"),
            "10.0.0.5 is refused by --outbound-deny 10.0.0.0/8"
        );
    }

    #[test]
    fn allow_opens_default_denied_ranges() {
        let p = policy(&["127.0.0.0/8", "::1", "10.1.2.3"], &[]);
        assert_eq!(p.check_ip(ip("127.0.0.1")), Ok(()));
        assert_eq!(p.check_ip(ip("::1")), Ok(()));
        assert_eq!(p.check_ip(ip("10.1.2.3")), Ok(()));
        assert!(p.check_ip(ip("10.1.2.4")).is_err(), "a bare IP is a /32");
        assert!(p.check_ip(ip("192.168.0.1")).is_err());
    }

    #[test]
    fn allow_cannot_open_always_refused() {
        let p = policy(
            &["0.0.0.0/0", "::/0", "169.254.0.0/16", "169.254.169.254"],
            &[],
        );
        assert_eq!(rule_of(&p, "169.254.169.254").as_deref(), Some(METADATA));
        assert_eq!(rule_of(&p, "169.254.3.4").as_deref(), Some(LINK_LOCAL));
        assert_eq!(rule_of(&p, "fd00:ec2::254").as_deref(), Some(METADATA));
        assert_eq!(rule_of(&p, "fe80::1").as_deref(), Some(LINK_LOCAL));
        assert_eq!(rule_of(&p, "224.0.0.1").as_deref(), Some(MULTICAST));
        assert_eq!(rule_of(&p, "255.255.255.255").as_deref(), Some(BROADCAST));
        assert_eq!(rule_of(&p, "0.0.0.0").as_deref(), Some(UNSPECIFIED));
        assert_eq!(p.check_ip(ip("127.0.0.1")), Ok(()));
    }

    #[test]
    fn deny_beats_allow_and_can_refuse_public_addresses() {
        let p = policy(
            &["10.0.0.0/8"],
            &["10.0.0.0/8", "8.8.8.8", "2606:4700::/32"],
        );
        assert_eq!(
            rule_of(&p, "10.0.0.5").as_deref(),
            Some("--outbound-deny 10.0.0.0/8")
        );
        assert_eq!(
            rule_of(&p, "8.8.8.8").as_deref(),
            Some("--outbound-deny 8.8.8.8")
        );
        assert_eq!(
            rule_of(&p, "2606:4700::1111").as_deref(),
            Some("--outbound-deny 2606:4700::/32")
        );
        assert_eq!(p.check_ip(ip("8.8.4.4")), Ok(()));
        // Even deny cannot change which rule refuses metadata.
        let p = policy(&[], &["169.254.0.0/16"]);
        assert_eq!(rule_of(&p, "169.254.169.254").as_deref(), Some(METADATA));
    }

    #[test]
    fn ipv4_embedding_ipv6_is_checked_as_ipv4() {
        let p = policy(&[], &[]);
        assert_eq!(
            rule_of(&p, "::ffff:169.254.169.254").as_deref(),
            Some(METADATA)
        );
        assert_eq!(rule_of(&p, "::169.254.169.254").as_deref(), Some(METADATA));
        assert_eq!(
            rule_of(&p, "64:ff9b::169.254.169.254").as_deref(),
            Some(METADATA)
        );
        assert_eq!(rule_of(&p, "::ffff:127.0.0.1").as_deref(), Some(LOOPBACK));
        assert_eq!(rule_of(&p, "::ffff:0.0.0.0").as_deref(), Some(UNSPECIFIED));
        assert!(rule_of(&p, "::ffff:10.0.0.1").is_some_and(|r| r.contains("10.0.0.0/8")));
        assert_eq!(p.check_ip(ip("::ffff:8.8.8.8")), Ok(()));
        // ::1 is IPv6 loopback, not the IPv4-compatible form of 0.0.0.1.
        assert_eq!(rule_of(&p, "::1").as_deref(), Some(LOOPBACK));
        assert_eq!(rule_of(&p, "::").as_deref(), Some(UNSPECIFIED));

        let p = policy(&["127.0.0.0/8"], &["::ffff:10.0.0.0/104"]);
        assert_eq!(p.check_ip(ip("::ffff:127.0.0.1")), Ok(()));
        assert_eq!(
            rule_of(&p, "10.9.9.9").as_deref(),
            Some("--outbound-deny ::ffff:10.0.0.0/104"),
            "a mapped operator range covers the IPv4 range"
        );
    }

    #[test]
    fn bad_cidrs_are_named() {
        for bad in ["10.0.0.0/33", "not-an-ip", "", "10.0.0/8", "::1/129"] {
            let err = OutboundPolicy::new(&[bad.to_string()], &[]).expect_err(bad);
            let msg = err.to_string();
            assert!(msg.starts_with("--outbound-allow "), "{msg}");
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
        }
        let err = OutboundPolicy::new(&[], &["10.0.0.0/8".into(), "300.0.0.1".into()])
            .expect_err("bad deny");
        assert!(matches!(
            &err,
            PolicyError::BadCidr { flag: "--outbound-deny", value, .. } if value == "300.0.0.1"
        ));
    }

    #[tokio::test]
    async fn check_url_with_ip_literals() {
        let p = policy(&[], &[]);
        let refused = p.check_url(&url("http://127.0.0.1:8080/mcp")).await;
        assert_eq!(refused.map_err(|r| r.rule).err().as_deref(), Some(LOOPBACK));
        let refused = p.check_url(&url("http://[::ffff:169.254.169.254]/")).await;
        assert_eq!(refused.map_err(|r| r.rule).err().as_deref(), Some(METADATA));
        // The url crate normalises odd IPv4 spellings before we see them.
        let refused = p.check_url(&url("http://0x7f.1/")).await;
        assert_eq!(refused.map_err(|r| r.rule).err().as_deref(), Some(LOOPBACK));
        assert_eq!(p.check_url(&url("https://8.8.8.8/mcp")).await, Ok(()));
        assert!(p.check_url(&url("data:text/plain,hi")).await.is_err());
    }

    #[tokio::test]
    async fn check_url_with_localhost() {
        let refusal = policy(&[], &[])
            .check_url(&url("http://localhost:9/mcp"))
            .await
            .expect_err("loopback is denied by default");
        assert!(refusal.target.starts_with("localhost ("), "{refusal}");
        assert_eq!(refusal.rule, LOOPBACK);
        assert_eq!(
            allow_loopback()
                .check_url(&url("http://localhost:9/mcp"))
                .await,
            Ok(())
        );
        // With only 127.0.0.0/8 allowed, the name passes only if it has no
        // ::1 address: one refused address refuses the whole name.
        let partial = policy(&["127.0.0.0/8"], &[]);
        let has_v6 = tokio::net::lookup_host(("localhost", 9))
            .await
            .map(|mut a| a.any(|a| a.is_ipv6()))
            .unwrap_or(false);
        assert_eq!(
            partial
                .check_url(&url("http://localhost:9/"))
                .await
                .is_err(),
            has_v6
        );
    }

    #[tokio::test]
    async fn check_url_refuses_metadata_names_without_lookup() {
        let p = policy(&["0.0.0.0/0", "::/0"], &[]);
        for u in [
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://METADATA.GOOGLE.INTERNAL./",
            "https://metadata.goog/",
            "http://x.metadata.goog:8080/",
        ] {
            // A lookup would fail here with a "must resolve" rule instead.
            let refusal = p.check_url(&url(u)).await.expect_err(u);
            assert_eq!(refusal.rule, METADATA, "{u}");
        }
        assert!(refused_name("notmetadata.goog").is_none());
        assert!(refused_name("metadata.google.internal.example.com").is_none());
    }

    #[tokio::test]
    async fn check_url_refuses_names_that_do_not_resolve() {
        let refusal = policy(&[], &[])
            .check_url(&url("http://does-not-exist.invalid/"))
            .await
            .expect_err("unresolvable");
        assert_eq!(refusal.target, "does-not-exist.invalid");
        assert!(
            refusal.rule.starts_with("host names must resolve"),
            "{refusal}"
        );
    }

    #[tokio::test]
    async fn resolver_enforces_policy() {
        let name = || reqwest::dns::Name::from_str("localhost").expect("valid name");
        let err = match policy(&[], &[]).resolver().resolve(name()).await {
            Ok(_) => panic!("loopback must be refused"),
            Err(err) => err,
        };
        let refusal = err.downcast_ref::<Refusal>().expect("a Refusal");
        assert_eq!(refusal.rule, LOOPBACK);

        let addrs: Vec<SocketAddr> = match allow_loopback().resolver().resolve(name()).await {
            Ok(addrs) => addrs.collect(),
            Err(err) => panic!("allowed: {err}"),
        };
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");

        let metadata = reqwest::dns::Name::from_str("metadata.google.internal").expect("name");
        assert!(allow_loopback().resolver().resolve(metadata).await.is_err());
    }

    /// A one-request-per-connection HTTP responder on 127.0.0.1. `respond`
    /// maps the request path to status line and extra headers.
    async fn serve(respond: fn(&str, u16) -> String) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        serve_on(listener, respond)
    }

    fn serve_on<F>(listener: TcpListener, respond: F) -> (u16, Arc<AtomicUsize>)
    where
        F: Fn(&str, u16) -> String + Send + Sync + 'static,
    {
        let respond = Arc::new(respond);
        let port = listener.local_addr().expect("addr").port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let respond = respond.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    let reply = format!(
                        "HTTP/1.1 {}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        respond(&path, port)
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        (port, hits)
    }

    fn client(p: &OutboundPolicy) -> reqwest::Client {
        p.apply(reqwest::Client::builder())
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .expect("client")
    }

    fn chain_of_error(err: &reqwest::Error) -> Vec<String> {
        let mut out = Vec::new();
        let mut source: Option<&dyn std::error::Error> = Some(err);
        while let Some(e) = source {
            out.push(e.to_string());
            source = e.source();
        }
        out
    }

    fn find_refusal(err: &reqwest::Error) -> Option<&Refusal> {
        let mut source = std::error::Error::source(err);
        while let Some(e) = source {
            if let Some(refusal) = e.downcast_ref::<Refusal>() {
                return Some(refusal);
            }
            source = e.source();
        }
        None
    }

    #[tokio::test]
    async fn client_resolver_blocks_loopback_unless_allowed() {
        let (port, hits) = serve(|_, _| "200 OK".into()).await;
        let target = format!("http://localhost:{port}/");

        let err = client(&policy(&[], &[]))
            .get(&target)
            .send()
            .await
            .expect_err("loopback is refused by default");
        let refusal = find_refusal(&err).unwrap_or_else(|| panic!("{:?}", chain_of_error(&err)));
        assert_eq!(refusal.rule, LOOPBACK);
        assert_eq!(hits.load(Ordering::SeqCst), 0, "no connection was made");

        let resp = client(&allow_loopback())
            .get(&target)
            .send()
            .await
            .expect("loopback allowed");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.expect("body"), "ok");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn redirect_to_metadata_is_not_followed() {
        let (port, hits) = serve(|path, _| match path {
            "/ip" => "302 Found\r\nlocation: http://169.254.169.254/latest/meta-data/".into(),
            "/mapped" => "302 Found\r\nlocation: http://[::ffff:a9fe:a9fe]/".into(),
            _ => "302 Found\r\nlocation: http://metadata.google.internal/".into(),
        })
        .await;
        let c = client(&allow_loopback());
        for path in ["/ip", "/mapped", "/name"] {
            let err = c
                .get(format!("http://localhost:{port}{path}"))
                .send()
                .await
                .expect_err("redirect must not be followed");
            assert!(err.is_redirect(), "{:?}", chain_of_error(&err));
            let refusal =
                find_refusal(&err).unwrap_or_else(|| panic!("{:?}", chain_of_error(&err)));
            assert_eq!(refusal.rule, METADATA, "{path}");
        }
        assert_eq!(
            hits.load(Ordering::SeqCst),
            3,
            "only the local responder was contacted"
        );
    }

    #[tokio::test]
    async fn redirects_are_followed_within_policy_and_capped() {
        // /n redirects to /n+1; /2 answers 200.
        let (port, hits) = serve(|path, port| match path {
            "/0" => format!("302 Found\r\nlocation: http://127.0.0.1:{port}/1"),
            "/1" => "302 Found\r\nlocation: /2".into(),
            "/2" => "200 OK".into(),
            _ => "302 Found\r\nlocation: /loop".into(),
        })
        .await;
        let c = client(&allow_loopback());
        let resp = c
            .get(format!("http://localhost:{port}/0"))
            .send()
            .await
            .expect("followed");
        assert_eq!(resp.status(), 200);
        assert_eq!(hits.load(Ordering::SeqCst), 3);

        let err = c
            .get(format!("http://localhost:{port}/loop"))
            .send()
            .await
            .expect_err("endless redirects");
        assert!(err.is_redirect(), "{:?}", chain_of_error(&err));
        assert_eq!(hits.load(Ordering::SeqCst), 3 + 1 + MAX_REDIRECTS);
    }

    #[tokio::test]
    async fn redirect_to_refused_ip_literal_is_not_followed() {
        // The victim listens on 127.0.0.2, which only 127.0.0.1/32 being
        // allowed leaves refused; reqwest connects to IP literals without
        // asking the resolver, so only the redirect policy can stop this.
        let Ok(victim) = TcpListener::bind("127.0.0.2:0").await else {
            eprintln!("skipped: cannot bind 127.0.0.2");
            return;
        };
        let (victim_port, victim_hits) = serve_on(victim, |_, _| "200 OK".into());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (port, _) = serve_on(listener, move |_, _| {
            format!("302 Found\r\nlocation: http://127.0.0.2:{victim_port}/")
        });
        let p = policy(&["127.0.0.1/32"], &[]);
        let err = client(&p)
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .expect_err("redirect must not be followed");
        let refusal = find_refusal(&err).unwrap_or_else(|| panic!("{:?}", chain_of_error(&err)));
        assert_eq!(refusal.target, "127.0.0.2");
        assert_eq!(refusal.rule, LOOPBACK);
        assert_eq!(victim_hits.load(Ordering::SeqCst), 0);

        // Control: the resolver alone does not stop it.
        let unguarded = reqwest::Client::builder()
            .no_proxy()
            .dns_resolver(p.resolver())
            .build()
            .expect("client");
        let resp = unguarded
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .expect("followed without the redirect policy");
        assert_eq!(resp.status(), 200);
        assert_eq!(victim_hits.load(Ordering::SeqCst), 1);
    }
}
