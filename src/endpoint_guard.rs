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

/// IPv4 addresses that are not the public internet: this host, private and shared
/// networks, link-local, the special-purpose blocks of RFC 6890 and what follows from
/// them (benchmarking, documentation, 6to4 relays, reserved, multicast, broadcast).
fn private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0 // "this network" 0.0.0.0/8, the unspecified address among them
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT) 100.64.0.0/10
        || (a == 169 && b == 254) // link-local (cloud metadata lives here)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments 192.0.0.0/24
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 192 && b == 168)
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18.0.0/15
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || a >= 224 // multicast 224.0.0.0/4, reserved 240.0.0.0/4, broadcast
}

/// IPv6 is allowed only in global unicast (2000::/3), and not in the parts of it that
/// embed or reach IPv4 or are not the public internet. Everything else is refused:
/// unspecified, loopback, IPv4-compatible `::a.b.c.d` and IPv4-mapped `::ffff:a.b.c.d`
/// (in every spelling: the parser has already normalised them), IPv4-translated, NAT64
/// (64:ff9b::/96 and 64:ff9b:1::/48), discard-only, unique-local, site-local, link-local
/// and multicast.
fn private_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let global_unicast = (s[0] & 0xe000) == 0x2000;
    !global_unicast
        // IETF protocol assignments 2001::/23: Teredo 2001::/32, benchmarking, ORCHID, …
        || (s[0] == 0x2001 && s[1] < 0x0200)
        // documentation 2001:db8::/32
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        // 6to4 2002::/16 carries an IPv4 address
        || s[0] == 0x2002
        // documentation 3fff::/20
        || (s[0] & 0xfff0) == 0x3ff0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ascii_host_names_are_understood() {
        // The build carries no Unicode host tables: an IDN is refused, its punycode works.
        assert_eq!(
            check_base_url("https://bücher.example/v1", false),
            Err(GuardError::NotAUrl)
        );
        assert!(check_base_url("https://xn--bcher-kva.example/v1", false).is_ok());
    }

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
            // names
            "https://localhost:11434",
            "https://LOCALHOST.",
            "https://api.localhost",
            "https://metadata.google.internal",
            "https://printer.local",
            "https://router.home.arpa",
            "https://intranet",
            // IPv4 in every spelling the URL parser accepts
            "https://127.0.0.1",
            "https://127.1",
            "https://2130706433",
            "https://0x7f000001",
            "https://0177.0.0.1",
            "https://0x7f.0.0.1",
            // IPv4 special ranges
            "https://0.0.0.0",
            "https://0.1.2.3",
            "https://10.0.0.5",
            "https://100.64.0.1",
            "https://100.127.255.254",
            "https://169.254.169.254/latest/meta-data",
            "https://172.16.3.4",
            "https://172.31.255.255",
            "https://192.0.0.8",
            "https://192.0.2.1",
            "https://192.88.99.1",
            "https://192.168.1.10",
            "https://198.18.0.1",
            "https://198.19.255.255",
            "https://198.51.100.7",
            "https://203.0.113.9",
            "https://224.0.0.1",
            "https://239.255.255.250",
            "https://240.0.0.1",
            "https://255.255.255.255",
            // IPv6 local and special
            "https://[::]",
            "https://[::1]",
            "https://[0:0:0:0:0:0:0:1]",
            "https://[fd00::1]",
            "https://[fc00::1]",
            "https://[fe80::1]",
            "https://[febf::1]",
            "https://[fec0::1]",
            "https://[ff02::1]",
            "https://[100::1]",
            // IPv6 forms that embed or reach IPv4
            "https://[::127.0.0.1]",
            "https://[::7f00:1]",
            "https://[::8.8.8.8]",
            "https://[::ffff:127.0.0.1]",
            "https://[::ffff:7f00:1]",
            "https://[0:0:0:0:0:ffff:127.0.0.1]",
            "https://[::FFFF:10.0.0.1]",
            "https://[::ffff:169.254.169.254]",
            "https://[::ffff:0:127.0.0.1]",
            "https://[64:ff9b::127.0.0.1]",
            "https://[64:ff9b::a9fe:a9fe]",
            "https://[64:ff9b:1::a00:1]",
            "https://[2002:7f00:1::1]",
            "https://[2002:a9fe:a9fe::]",
            "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]",
            "https://[2001:db8::1]",
            "https://[2001:2::1]",
            "https://[3fff::1]",
        ] {
            assert_eq!(
                check_base_url(bad, false),
                Err(GuardError::PrivateAddress),
                "{bad}"
            );
        }
    }

    #[test]
    fn public_addresses_pass() {
        for good in [
            "https://1.1.1.1",
            "https://100.128.0.1",
            "https://172.32.0.1",
            "https://192.0.1.1",
            "https://198.20.0.1",
            "https://223.255.255.254",
            "https://[2606:4700:4700::1111]",
            "https://[2a00:1450:4001:82b::200e]",
            "https://[2001:4860:4860::8888]",
        ] {
            assert!(check_base_url(good, false).is_ok(), "{good}");
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
