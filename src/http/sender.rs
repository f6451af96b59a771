//! Who sent a request: the direct peer, or, when that peer is a trusted proxy (NGINX), the
//! client it names in `X-Forwarded-For` / `X-Real-IP`. Forwarding headers from anyone else
//! are ignored, so a sender cannot claim an allowed address by writing a header.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

use super::Peer;

#[derive(Debug, Clone, Default)]
pub struct SenderRules {
    pub trusted_proxies: Vec<IpNet>,
    /// `None`: every sender may post.
    pub allowed: Option<Vec<IpNet>>,
}

impl SenderRules {
    fn trusted(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        self.trusted_proxies.iter().any(|net| net.contains(&addr))
    }

    /// The client's address. A unix-socket peer is trusted: only the proxy can reach the
    /// socket. `X-Forwarded-For` is read from the right, skipping trusted proxies, so the
    /// first address added by a proxy of ours wins over anything the client wrote.
    pub fn client(&self, peer: &Peer, headers: &HeaderMap) -> Option<IpAddr> {
        let direct = peer.0.map(|addr| canonical(addr.ip()));
        if direct.is_some_and(|addr| !self.trusted(addr)) {
            return direct;
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|item| item.trim().parse::<IpAddr>().ok().map(canonical))
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default();
        if let Some(client) = forwarded.iter().rev().find(|addr| !self.trusted(**addr)) {
            return Some(*client);
        }
        let real_ip = headers
            .get("x-real-ip")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
            .map(canonical);
        real_ip.or(forwarded.first().copied()).or(direct)
    }

    /// The subject of the client certificate the proxy verified (NGINX's
    /// `$ssl_client_s_dn`, passed as `X-Client-Subject` beside `X-Client-Verify:
    /// SUCCESS`). Believed only from a trusted proxy, like the forwarding headers.
    pub fn client_certificate(&self, peer: &Peer, headers: &HeaderMap) -> Option<String> {
        let direct = peer.0.map(|addr| canonical(addr.ip()));
        if direct.is_some_and(|addr| !self.trusted(addr)) {
            return None;
        }
        let verified = headers.get("x-client-verify")?.to_str().ok()?;
        if verified != "SUCCESS" {
            return None;
        }
        let subject = headers.get("x-client-subject")?.to_str().ok()?;
        (!subject.is_empty()).then(|| subject.to_owned())
    }

    /// Whether `client` may post alerts. An unknown address is refused when a list is set.
    pub fn allows(&self, client: Option<IpAddr>) -> bool {
        match (&self.allowed, client) {
            (None, _) => true,
            (Some(nets), Some(addr)) => nets.iter().any(|net| net.contains(&addr)),
            (Some(_), None) => false,
        }
    }
}

/// IPv4 clients of a dual-stack socket arrive as `::ffff:a.b.c.d`; lists are written in
/// plain IPv4.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn rules() -> SenderRules {
        SenderRules {
            trusted_proxies: vec!["127.0.0.1/32".parse().unwrap(), "::1/128".parse().unwrap()],
            allowed: Some(vec!["52.89.214.238/32".parse().unwrap()]),
        }
    }

    fn peer(addr: &str) -> Peer {
        Peer(Some(format!("{addr}:5555").parse().unwrap()))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn headers_from_an_untrusted_peer_are_ignored() {
        let forged = headers(&[
            ("x-forwarded-for", "52.89.214.238"),
            ("x-real-ip", "52.89.214.238"),
        ]);
        let client = rules().client(&peer("203.0.113.9"), &forged);
        assert_eq!(client, Some("203.0.113.9".parse().unwrap()));
        assert!(!rules().allows(client));
    }

    #[test]
    fn a_trusted_proxy_names_the_client_and_forged_entries_lose() {
        // The client wrote 52.89.214.238 itself; NGINX appended the real address.
        let h = headers(&[
            ("x-forwarded-for", "52.89.214.238, 198.51.100.7"),
            ("x-real-ip", "198.51.100.7"),
        ]);
        assert_eq!(
            rules().client(&peer("127.0.0.1"), &h),
            Some("198.51.100.7".parse().unwrap())
        );
        let h = headers(&[("x-forwarded-for", "52.89.214.238")]);
        let client = rules().client(&Peer(None), &h);
        assert_eq!(client, Some("52.89.214.238".parse().unwrap()));
        assert!(rules().allows(client));
    }

    #[test]
    fn a_trusted_peer_without_headers_is_itself_and_unparsable_headers_are_dropped() {
        assert_eq!(
            rules().client(&peer("127.0.0.1"), &HeaderMap::new()),
            Some("127.0.0.1".parse().unwrap())
        );
        let h = headers(&[
            ("x-forwarded-for", "not-an-ip"),
            ("x-real-ip", "198.51.100.7"),
        ]);
        assert_eq!(
            rules().client(&peer("127.0.0.1"), &h),
            Some("198.51.100.7".parse().unwrap())
        );
        assert_eq!(rules().client(&Peer(None), &HeaderMap::new()), None);
        assert!(!rules().allows(None));
        assert!(SenderRules::default().allows(None));
    }

    #[test]
    fn mapped_ipv4_matches_ipv4_lists() {
        let client = rules().client(&peer("[::ffff:52.89.214.238]"), &HeaderMap::new());
        assert_eq!(client, Some("52.89.214.238".parse().unwrap()));
    }
}
