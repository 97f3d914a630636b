//! The guard for user-supplied endpoints (`base_url`): a URL a user types must not turn
//! the vault into a way to reach its own network. Checked when stored and before each call.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// Why a `base_url` is refused; the message is shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("must be an absolute http(s) URL")]
    NotAUrl,
    #[error("must use https")]
    NotHttps,
    #[error("must not contain credentials, a query or a fragment")]
    ExtraParts,
    #[error("must not name a loopback, private, link-local or internal address")]
    PrivateAddress,
}

/// Checks `raw` and returns it normalised (no trailing slash). With `allow_private`
/// (development only) http and private addresses are accepted.
pub fn check_base_url(raw: &str, allow_private: bool) -> Result<String, GuardError> {
    let url = Url::parse(raw.trim()).map_err(|_| GuardError::NotAUrl)?;
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        "http" => return Err(GuardError::NotHttps),
        _ => return Err(GuardError::NotAUrl),
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(GuardError::ExtraParts);
    }
    let private = match url.host().ok_or(GuardError::NotAUrl)? {
        Host::Ipv4(ip) => private_v4(ip),
        Host::Ipv6(ip) => private_v6(ip),
        Host::Domain(name) => private_name(name),
    };
    if private && !allow_private {
        return Err(GuardError::PrivateAddress);
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn private_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    // A bare IP that reached here as a name (the URL parser normalises most forms).
    if let Ok(ip) = name
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
    {
        return match ip {
            IpAddr::V4(v4) => private_v4(v4),
            IpAddr::V6(v6) => private_v6(v6),
        };
    }
    name == "localhost"
        || name.ends_with(".localhost")
        || name.ends_with(".internal")
        || name.ends_with(".local")
        || name.ends_with(".home.arpa")
        || !name.contains('.')
}

fn private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // CGNAT 100.64.0.0/10
        || (a == 100 && (64..128).contains(&b))
        // Benchmarking 198.18.0.0/15 and reserved 240.0.0.0/4
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240
}

fn private_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return private_v4(v4);
    }
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // Unique local fc00::/7 and link-local fe80::/10
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        // NAT64 64:ff9b::/96 can reach IPv4 ranges.
        || (first == 0x0064 && ip.segments()[1] == 0xff9b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_https_urls_pass_normalised() {
        assert_eq!(
            check_base_url("https://ollama.com/", false).unwrap(),
            "https://ollama.com"
        );
        assert_eq!(
            check_base_url("https://llm.example.org:8443/base", false).unwrap(),
            "https://llm.example.org:8443/base"
        );
        assert_eq!(
            check_base_url("https://8.8.8.8", false).unwrap(),
            "https://8.8.8.8"
        );
    }

    #[test]
    fn private_and_internal_destinations_are_refused() {
        for bad in [
            "https://localhost:11434",
            "https://api.localhost",
            "https://127.0.0.1",
            "https://127.1",
            "https://2130706433",
            "https://0x7f000001",
            "https://10.0.0.5",
            "https://172.16.3.4",
            "https://192.168.1.10",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1",
            "https://0.0.0.0",
            "https://[::1]",
            "https://[fd00::1]",
            "https://[fe80::1]",
            "https://[::ffff:127.0.0.1]",
            "https://[::ffff:10.0.0.1]",
            "https://metadata.google.internal",
            "https://printer.local",
            "https://intranet",
        ] {
            assert_eq!(
                check_base_url(bad, false),
                Err(GuardError::PrivateAddress),
                "{bad}"
            );
        }
    }

    #[test]
    fn other_shapes_are_refused() {
        assert_eq!(
            check_base_url("http://ollama.com", false),
            Err(GuardError::NotHttps)
        );
        assert_eq!(
            check_base_url("ftp://ollama.com", false),
            Err(GuardError::NotAUrl)
        );
        assert_eq!(
            check_base_url("ollama.com", false),
            Err(GuardError::NotAUrl)
        );
        assert_eq!(
            check_base_url("https://u:p@ollama.com", false),
            Err(GuardError::ExtraParts)
        );
        assert_eq!(
            check_base_url("https://ollama.com/?x=1", false),
            Err(GuardError::ExtraParts)
        );
    }

    #[test]
    fn development_may_allow_private_http() {
        assert_eq!(
            check_base_url("http://127.0.0.1:11434", true).unwrap(),
            "http://127.0.0.1:11434"
        );
        assert_eq!(
            check_base_url("http://localhost:11434/", true).unwrap(),
            "http://localhost:11434"
        );
    }
}
