//! Docker Registry HTTP API v2 transport: scheme policy, TLS, time-outs, and anonymous, basic
//! and bearer-token authentication.
//!
//! Blocking `ureq` rather than the async `oci-client`: a fetch is a sequence of streamed
//! downloads whose bytes are hashed as they go, the per-read idle time-out is what tells a
//! stalled registry from a slow one, and it keeps tokio/hyper out of stage0's build.

use std::io::Read;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use ureq::http::Response;
use ureq::Body;

/// Largest manifest, index or token response accepted.
pub const MAX_DOCUMENT_LEN: u64 = 4 << 20;

/// What the client may do; serializable so the unprivileged child gets the same settings.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClientSettings {
    pub insecure_http: bool,
    pub insecure_tls: bool,
    pub timeout: Duration,
    pub credentials: Option<(String, String)>,
}

/// By hand: a debug log of a pull request must never carry the registry password.
impl std::fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSettings")
            .field("insecure_http", &self.insecure_http)
            .field("insecure_tls", &self.insecure_tls)
            .field("timeout", &self.timeout)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .finish_non_exhaustive()
    }
}

/// Whether `host` (`name[:port]`, `[v6]:port`) is the local machine: plain http is allowed there.
pub fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Docker Hub's registry is reached under another name than the one images are called by.
fn api_host(host: &str) -> &str {
    if host == "docker.io" {
        "registry-1.docker.io"
    } else {
        host
    }
}

/// Which schemes to try for a host, decided before any connection: https, falling back to plain
/// http only on loopback (traffic that never leaves the host) or with `--insecure-options=http`.
pub fn schemes(host: &str, insecure_http: bool) -> &'static [&'static str] {
    if is_loopback(host) || insecure_http {
        &["https", "http"]
    } else {
        &["https"]
    }
}

/// One repository on one registry, with the credentials it took to get in.
pub struct Client {
    agent: ureq::Agent,
    host: String,
    repo: String,
    base: String,
    settings: ClientSettings,
    /// `Authorization` header value in use, once a challenge was answered.
    authorization: Option<String>,
}

/// By hand: the credentials and the `Authorization` value are secrets; say only whether set.
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("host", &self.host)
            .field("repo", &self.repo)
            .field("base", &self.base)
            .field("insecure_http", &self.settings.insecure_http)
            .field("insecure_tls", &self.settings.insecure_tls)
            .field("timeout", &self.settings.timeout)
            .field("has_credentials", &self.settings.credentials.is_some())
            .field("authorized", &self.authorization.is_some())
            .finish_non_exhaustive()
    }
}

fn system_roots() -> Option<ureq::tls::RootCerts> {
    // Debian's bundle, so private CAs added with update-ca-certificates work; else webpki-roots.
    let pem = std::fs::read("/etc/ssl/certs/ca-certificates.crt").ok()?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    (!certs.is_empty()).then(|| ureq::tls::RootCerts::new_with_certs(&certs))
}

fn agent(settings: &ClientSettings, https_only: bool) -> ureq::Agent {
    let mut tls = ureq::tls::TlsConfig::builder().disable_verification(settings.insecure_tls);
    if let Some(roots) = system_roots() {
        tls = tls.root_certs(roots);
    }
    let t = Some(settings.timeout);
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .https_only(https_only)
        .tls_config(tls.build())
        .timeout_resolve(t)
        .timeout_connect(t)
        .timeout_send_request(t)
        .timeout_recv_response(t)
        .timeout_per_read(t)
        .user_agent(concat!("ark/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// Turns a transport error into one line a user can act on.
pub fn describe(host: &str, e: &ureq::Error, timeout: Duration) -> String {
    match e {
        ureq::Error::Timeout(what) => format!(
            "registry {host} stalled: nothing received for {}s ({what})",
            timeout.as_secs_f32()
        ),
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => format!(
            "registry {host} stalled: nothing received for {}s",
            timeout.as_secs_f32()
        ),
        ureq::Error::HostNotFound => format!("registry host {host} not found"),
        ureq::Error::ConnectionFailed => format!("cannot connect to registry {host}"),
        other if other.to_string().contains("invalid peer certificate") => format!(
            "registry {host}: TLS certificate not trusted ({other}); to accept it anyway, use --insecure-options=tls"
        ),
        other => format!("registry {host}: {other}"),
    }
}

/// Read errors while streaming a body (time-outs come back as io errors).
pub fn describe_read(host: &str, e: &std::io::Error, timeout: Duration) -> String {
    if e.kind() == std::io::ErrorKind::TimedOut
        || e.get_ref()
            .is_some_and(|inner| inner.to_string().contains("timeout"))
    {
        format!(
            "registry {host} stalled: nothing received for {}s",
            timeout.as_secs_f32()
        )
    } else {
        format!("registry {host}: {e}")
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// `Scheme k="v", k2=v2` (quoted values may contain commas).
    fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let (scheme, mut rest) = match header.split_once(char::is_whitespace) {
            Some((s, r)) => (s, r.trim_start()),
            None => (header, ""),
        };
        let mut params = Vec::new();
        while !rest.is_empty() {
            let (key, after) = rest.split_once('=')?;
            let key = key.trim().to_string();
            let after = after.trim_start();
            let (value, remaining) = if let Some(q) = after.strip_prefix('"') {
                let mut value = String::new();
                let mut chars = q.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => {
                            end = Some(i + 1);
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &q[end?..])
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_string(), &after[end..])
            };
            params.push((key, value));
            rest = remaining.trim_start().trim_start_matches(',').trim_start();
        }
        Some(Challenge {
            scheme: scheme.to_string(),
            params,
        })
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

impl Client {
    /// Finds how to talk to `host` (scheme, credentials) with a `GET /v2/` and answers its
    /// authentication challenge for pulling `repo`.
    pub fn connect(host: &str, repo: &str, settings: &ClientSettings) -> Result<Self> {
        let mut failures = Vec::new();
        for scheme in schemes(host, settings.insecure_http) {
            let client = Client {
                agent: agent(settings, *scheme == "https"),
                host: host.to_string(),
                repo: repo.to_string(),
                base: format!("{scheme}://{}", api_host(host)),
                settings: settings.clone(),
                authorization: None,
            };
            let url = format!("{}/v2/", client.base);
            match client.agent.get(&url).call() {
                // The v2 API answers its base endpoint with 200, or 401 until authenticated.
                Ok(resp) if !matches!(resp.status().as_u16(), 200 | 401) => failures.push((
                    *scheme,
                    format!(
                        "registry {host} answered HTTP {} to /v2/: not a Docker Registry v2 API",
                        resp.status().as_u16()
                    ),
                )),
                Ok(resp) => {
                    let mut client = client;
                    client.answer_challenge(&resp)?;
                    tracing::debug!(registry = %host, %scheme, "registry reachable");
                    return Ok(client);
                }
                Err(e) => failures.push((*scheme, describe(host, &e, settings.timeout))),
            }
        }
        let msg = match failures.as_slice() {
            [(scheme, msg)] if *scheme == "https" && !msg.contains("stalled") => format!(
                "{msg} (over https; if it serves plain http, allow that with --insecure-options=http)"
            ),
            [(_, msg)] => msg.clone(),
            [(_, first), rest @ ..] if rest.iter().all(|(_, m)| m == first) => first.clone(),
            all => all
                .iter()
                .map(|(scheme, msg)| format!("over {scheme}: {msg}"))
                .collect::<Vec<_>>()
                .join("; "),
        };
        Err(anyhow!(msg))
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// Reacts to a 401 on `/v2/` (or any later request): fetches a token or uses basic credentials.
    fn answer_challenge(&mut self, resp: &Response<Body>) -> Result<()> {
        if resp.status() != 401 {
            return Ok(());
        }
        let header = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                anyhow!(
                    "registry {} wants authentication but sent no challenge",
                    self.host
                )
            })?;
        let challenge = Challenge::parse(header).ok_or_else(|| {
            anyhow!(
                "registry {}: unparseable WWW-Authenticate {header:?}",
                self.host
            )
        })?;
        if challenge.scheme.eq_ignore_ascii_case("basic") {
            let Some((user, pass)) = &self.settings.credentials else {
                bail!(
                    "registry {} requires a user name and password: set ARK_REGISTRY_AUTH=USER:PASSWORD",
                    self.host
                );
            };
            self.authorization = Some(basic(user, pass));
            Ok(())
        } else if challenge.scheme.eq_ignore_ascii_case("bearer") {
            let token = self.fetch_token(&challenge)?;
            self.authorization = Some(format!("Bearer {token}"));
            Ok(())
        } else {
            bail!(
                "registry {} wants unsupported authentication {:?}",
                self.host,
                challenge.scheme
            )
        }
    }

    /// Gets a pull token from the challenge's realm (with basic credentials, if any).
    fn fetch_token(&self, challenge: &Challenge) -> Result<String> {
        let realm = challenge
            .param("realm")
            .ok_or_else(|| anyhow!("registry {}: bearer challenge without realm", self.host))?;
        let realm_host = realm
            .strip_prefix("https://")
            .or_else(|| realm.strip_prefix("http://"))
            .and_then(|r| r.split('/').next())
            .ok_or_else(|| {
                anyhow!(
                    "registry {}: token realm {realm:?} is not an http(s) URL",
                    self.host
                )
            })?;
        // Credentials must not travel in clear text to a host the http policy doesn't allow.
        if realm.starts_with("http://") && !is_loopback(realm_host) && !self.settings.insecure_http
        {
            bail!(
                "registry {}: token service {realm:?} is plain http; allow that with --insecure-options=http",
                self.host
            );
        }
        let agent = agent(&self.settings, realm.starts_with("https://"));
        let mut req = agent.get(realm);
        if let Some(service) = challenge.param("service") {
            req = req.query("service", service);
        }
        req = req.query("scope", format!("repository:{}:pull", self.repo));
        if let Some((user, pass)) = &self.settings.credentials {
            req = req.header("Authorization", basic(user, pass));
        }
        let resp = req
            .call()
            .map_err(|e| anyhow!(describe(realm_host, &e, self.settings.timeout)))?;
        match resp.status().as_u16() {
            200 => {}
            401 | 403 => bail!(
                "token service {realm:?} refused {}: check ARK_REGISTRY_AUTH",
                match &self.settings.credentials {
                    Some((u, _)) => format!("user {u:?}"),
                    None => "anonymous access".to_string(),
                }
            ),
            s => bail!("token service {realm:?} answered HTTP {s}"),
        }
        let body = resp
            .into_body()
            .with_config()
            .limit(MAX_DOCUMENT_LEN)
            .read_to_vec()
            .map_err(|e| anyhow!(describe(realm_host, &e, self.settings.timeout)))?;
        let t: TokenResponse = serde_json::from_slice(&body)
            .with_context(|| format!("token service {realm:?} sent no JSON token"))?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| anyhow!("token service {realm:?} sent no token"))
    }

    fn send(&self, url: &str, accept: &[&str]) -> Result<Response<Body>> {
        let mut req = self.agent.get(url);
        if !accept.is_empty() {
            req = req.header("Accept", accept.join(", "));
        }
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a);
        }
        req.call()
            .map_err(|e| anyhow!(describe(&self.host, &e, self.settings.timeout)))
    }

    /// `GET /v2/<repo>/<kind>/<reference>`, answering one fresh challenge (an expired token).
    pub fn get(&mut self, kind: &str, reference: &str, accept: &[&str]) -> Result<Response<Body>> {
        let url = format!("{}/v2/{}/{kind}/{reference}", self.base, self.repo);
        let mut resp = self.send(&url, accept)?;
        if resp.status() == 401 {
            self.answer_challenge(&resp)?;
            resp = self.send(&url, accept)?;
            if resp.status() == 401 {
                bail!(
                    "registry {} refused the credentials for {}: check ARK_REGISTRY_AUTH",
                    self.host,
                    self.repo
                );
            }
        }
        let what = if kind == "manifests" {
            "manifest"
        } else {
            "blob"
        };
        match resp.status().as_u16() {
            200 => Ok(resp),
            403 => bail!("registry {}: access to {} denied", self.host, self.repo),
            404 => bail!(
                "registry {}: {what} {}:{reference} not found",
                self.host,
                self.repo
            ),
            s => bail!(
                "registry {}: HTTP {s} for {what} {}:{reference}",
                self.host,
                self.repo
            ),
        }
    }

    /// A small document (manifest), size-limited. Returns (body, content type).
    pub fn get_document(
        &mut self,
        kind: &str,
        reference: &str,
        accept: &[&str],
    ) -> Result<(Vec<u8>, Option<String>)> {
        let resp = self.get(kind, reference, accept)?;
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
        let mut body = Vec::new();
        resp.into_body()
            .into_reader()
            .take(MAX_DOCUMENT_LEN + 1)
            .read_to_end(&mut body)
            .map_err(|e| anyhow!(describe_read(&self.host, &e, self.settings.timeout)))?;
        if body.len() as u64 > MAX_DOCUMENT_LEN {
            bail!(
                "registry {}: {} {reference} is larger than {MAX_DOCUMENT_LEN} bytes",
                self.host,
                kind.trim_end_matches('s')
            );
        }
        Ok((body, content_type))
    }
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_debug_never_shows_the_password() {
        let s = ClientSettings {
            insecure_http: false,
            insecure_tls: false,
            timeout: Duration::from_secs(30),
            credentials: Some(("alice".into(), "s3cret-pass".into())),
        };
        let shown = format!("{s:?}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(!shown.contains("s3cret-pass"), "{shown}");
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("127.3.4.5"));
        assert!(is_loopback("localhost:80"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("10.0.0.1:5000"));
        assert!(!is_loopback("registry.example"));
        assert!(!is_loopback("localhost.example.com:5000"));
        assert_eq!(schemes("10.0.0.1:5000", false), &["https"]);
        assert_eq!(schemes("10.0.0.1:5000", true), &["https", "http"]);
        assert_eq!(schemes("127.0.0.1:5000", false), &["https", "http"]);
    }

    #[test]
    fn parses_challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "Bearer");
        assert_eq!(c.param("realm"), Some("https://auth.example/token"));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull,push"));
        let c = Challenge::parse(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "Basic");
        assert_eq!(c.param("realm"), Some("Registry Realm"));
    }
}
