//! Cluster PKI: root CA, node certificates, join tokens.
//!
//! A node certificate's subject names the node (CN = node id), its role (OU =
//! `shoal-manager` / `shoal-worker`) and the cluster (O = cluster id), as Swarm does. The role
//! in the certificate is what every gRPC call is authorised against. A join token is
//! `SWMTKN-1-<sha256 of the root CA certificate, hex>-<secret>`: the digest lets a joining node
//! pin the CA before it trusts anything the manager says.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};

/// The DNS name every manager certificate carries and every client verifies against, so that
/// a node can dial any manager by IP address.
pub const MANAGER_SERVER_NAME: &str = "shoal-manager";

const TOKEN_PREFIX: &str = "SWMTKN-1";
const SECRET_LEN: usize = 25;

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("invalid join token: {0}")]
    InvalidToken(&'static str),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("cannot parse certificate: {0}")]
    BadCertificate(String),
    #[error("certificate {field} is missing or invalid")]
    MissingField { field: &'static str },
    #[error("a certificate validity of {0:?} is out of range")]
    Validity(Duration),
}

/// The role a node plays; it is written into the node's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }
    fn ou(self) -> &'static str {
        match self {
            Role::Manager => "shoal-manager",
            Role::Worker => "shoal-worker",
        }
    }
    fn from_ou(s: &str) -> Option<Role> {
        match s {
            "shoal-manager" => Some(Role::Manager),
            "shoal-worker" => Some(Role::Worker),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "manager" => Ok(Role::Manager),
            "worker" => Ok(Role::Worker),
            other => Err(format!(
                "invalid role {other:?}: expected manager or worker"
            )),
        }
    }
}

thread_local! {
    /// Set by [`seed_ids`]: ids drawn on this thread then follow the seed.
    static SEEDED_IDS: std::cell::RefCell<Option<rand::rngs::StdRng>> = const { std::cell::RefCell::new(None) };
}

/// Make [`random_id`] on this thread reproducible (a deterministic simulation runs a whole
/// cluster on one thread); `None` goes back to the OS-seeded generator.
pub fn seed_ids(seed: Option<u64>) {
    use rand::SeedableRng;
    SEEDED_IDS.with(|r| *r.borrow_mut() = seed.map(rand::rngs::StdRng::seed_from_u64));
}

/// A random identifier of `len` lowercase letters and digits (Swarm's id alphabet).
pub fn random_id(len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    SEEDED_IDS.with(|seeded| {
        let mut seeded = seeded.borrow_mut();
        let pick = |rng: &mut dyn rand::RngCore| {
            (0..len)
                .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
                .collect::<String>()
        };
        match seeded.as_mut() {
            Some(rng) => pick(rng),
            None => pick(&mut rand::thread_rng()),
        }
    })
}

/// Hex SHA-256 of a DER certificate.
pub fn digest_der(der: &[u8]) -> String {
    let d = Sha256::digest(der);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of the first certificate in a PEM text.
pub fn digest_pem(pem: &str) -> Result<String, SecurityError> {
    Ok(digest_der(&first_der(pem)?))
}

fn first_der(pem: &str) -> Result<Vec<u8>, SecurityError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| SecurityError::BadCertificate(e.to_string()))?;
    Ok(p.contents)
}

/// A parsed join token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_digest: String,
    pub secret: String,
}

impl JoinToken {
    pub fn generate(ca_digest: &str) -> JoinToken {
        JoinToken {
            ca_digest: ca_digest.to_string(),
            secret: random_id(SECRET_LEN),
        }
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}-{}-{}", self.ca_digest, self.secret)
    }
}

impl FromStr for JoinToken {
    type Err = SecurityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|r| r.strip_prefix('-'))
            .ok_or(SecurityError::InvalidToken("it must start with SWMTKN-1-"))?;
        let (digest, secret) = rest.split_once('-').ok_or(SecurityError::InvalidToken(
            "expected SWMTKN-1-<digest>-<secret>",
        ))?;
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SecurityError::InvalidToken("the CA digest is malformed"));
        }
        if secret.len() != SECRET_LEN || !secret.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(SecurityError::InvalidToken("the secret is malformed"));
        }
        Ok(JoinToken {
            ca_digest: digest.to_ascii_lowercase(),
            secret: secret.to_string(),
        })
    }
}

/// What a node certificate says about its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub node_id: String,
    pub role: Role,
    pub cluster_id: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertInfo {
    pub fn from_pem(pem: &str) -> Result<CertInfo, SecurityError> {
        CertInfo::from_der(&first_der(pem)?)
    }

    pub fn from_der(der: &[u8]) -> Result<CertInfo, SecurityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| SecurityError::BadCertificate(e.to_string()))?;
        let subject = cert.subject();
        let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
            it.next()
                .and_then(|a| a.as_str().ok())
                .map(|s| s.to_string())
        };
        let node_id = first(&mut subject.iter_common_name())
            .ok_or(SecurityError::MissingField { field: "CN" })?;
        let role = first(&mut subject.iter_organizational_unit())
            .and_then(|ou| Role::from_ou(&ou))
            .ok_or(SecurityError::MissingField { field: "OU" })?;
        let cluster_id = first(&mut subject.iter_organization()).unwrap_or_default();
        let ts = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
        Ok(CertInfo {
            node_id,
            role,
            cluster_id,
            not_before: ts(cert.validity().not_before.timestamp()),
            not_after: ts(cert.validity().not_after.timestamp()),
        })
    }

    /// True once less than half of the validity is left: time to renew (Swarm renews between
    /// 50% and 80% of the lifetime; we take the early end so a slow manager is no risk).
    pub fn needs_renewal(&self, now: SystemTime) -> bool {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        let half = self.not_before + life / 2;
        now >= half
    }
}

/// A fresh ECDSA P-256 key and a CSR for it, both PEM.
pub fn new_key_and_csr() -> Result<(String, String), SecurityError> {
    let key = KeyPair::generate()?;
    let params = CertificateParams::new(Vec::<String>::new())?;
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// The cluster's root certificate authority (certificate and key, PEM).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RootCa {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What goes into a node certificate besides the public key.
pub struct NodeCertRequest<'a> {
    pub csr_pem: &'a str,
    pub node_id: &'a str,
    pub role: Role,
    pub cluster_id: &'a str,
    pub validity: Duration,
}

impl RootCa {
    pub fn generate(cluster_id: &str) -> Result<RootCa, SecurityError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "shoal-root-ca");
        dn.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        // Swarm's root CA lives 20 years.
        params.not_after = now + time::Duration::days(20 * 365);
        let cert = params.self_signed(&key)?;
        Ok(RootCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    pub fn digest(&self) -> Result<String, SecurityError> {
        digest_pem(&self.cert_pem)
    }

    /// Sign a node certificate for the key in `req.csr_pem`; everything but the key is ours.
    pub fn issue(&self, req: &NodeCertRequest<'_>) -> Result<String, SecurityError> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, key)?;
        let mut csr = CertificateSigningRequestParams::from_pem(req.csr_pem)?;
        let mut params = CertificateParams::new(vec![
            MANAGER_SERVER_NAME.to_string(),
            req.node_id.to_string(),
        ])?;
        if req.role == Role::Worker {
            // Workers never serve the manager name.
            params.subject_alt_names = vec![SanType::DnsName(req.node_id.try_into()?)];
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, req.node_id);
        dn.push(DnType::OrganizationalUnitName, req.role.ou());
        dn.push(DnType::OrganizationName, req.cluster_id);
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        // Tolerate a little clock skew between nodes, but not so much that a short-lived
        // certificate is past its half-life (renewal point) when issued.
        let skew = Duration::from_secs(300).min(req.validity / 10);
        params.not_before = now - time::Duration::milliseconds(skew.as_millis() as i64);
        // Checked: a validity past what a date can hold (or X.509 can write, year 9999) is
        // refused, never an overflow.
        params.not_after = i64::try_from(req.validity.as_millis())
            .ok()
            .map(time::Duration::milliseconds)
            .and_then(|v| now.checked_add(v))
            .filter(|t| t.year() <= 9999)
            .ok_or(SecurityError::Validity(req.validity))?;
        csr.params = params;
        Ok(csr.signed_by(&issuer)?.pem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_out_of_range_validity_is_refused_not_a_panic() {
        let ca = RootCa::generate("c").unwrap();
        let (_key, csr) = new_key_and_csr().unwrap();
        // `swarm update --cert-expiry 2562047788015h`, then a join.
        for validity in [
            Duration::from_secs(2_562_047_788_015 * 3600),
            Duration::from_secs(20_000 * 365 * 24 * 3600),
            Duration::MAX,
        ] {
            let r = ca.issue(&NodeCertRequest {
                csr_pem: &csr,
                node_id: "n",
                role: Role::Worker,
                cluster_id: "c",
                validity,
            });
            assert!(matches!(r, Err(SecurityError::Validity(_))), "{validity:?}");
        }
    }

    #[test]
    fn token_round_trip_and_rejects() {
        let t = JoinToken::generate(&"ab".repeat(32));
        let s = t.to_string();
        assert!(s.starts_with("SWMTKN-1-abab"));
        assert_eq!(s.parse::<JoinToken>().unwrap(), t);
        for bad in [
            "",
            "SWMTKN-2-x-y",
            "SWMTKN-1-abc-def",
            &format!("SWMTKN-1-{}-short", "a".repeat(64)),
            &format!("SWMTKN-1-{}-{}", "g".repeat(64), "a".repeat(25)),
        ] {
            assert!(bad.parse::<JoinToken>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn issued_certificate_carries_id_role_cluster_and_validity() {
        let ca = RootCa::generate("cluster1").unwrap();
        let (_key, csr) = new_key_and_csr().unwrap();
        for role in [Role::Manager, Role::Worker] {
            let pem = ca
                .issue(&NodeCertRequest {
                    csr_pem: &csr,
                    node_id: "node123",
                    role,
                    cluster_id: "cluster1",
                    validity: Duration::from_secs(3600),
                })
                .unwrap();
            let info = CertInfo::from_pem(&pem).unwrap();
            assert_eq!(info.node_id, "node123");
            assert_eq!(info.role, role);
            assert_eq!(info.cluster_id, "cluster1");
            let life = info.not_after.duration_since(info.not_before).unwrap();
            assert!(life >= Duration::from_secs(3600) && life <= Duration::from_secs(3600 + 301));
            // Renewal is due at about half the validity, not earlier.
            assert!(!info.needs_renewal(SystemTime::now() + Duration::from_secs(1500)));
            assert!(!info.needs_renewal(SystemTime::now()));
            assert!(info.needs_renewal(SystemTime::now() + Duration::from_secs(1900)));
        }
    }

    #[test]
    fn short_certificates_are_not_born_due_for_renewal() {
        let ca = RootCa::generate("c").unwrap();
        let (_key, csr) = new_key_and_csr().unwrap();
        let pem = ca
            .issue(&NodeCertRequest {
                csr_pem: &csr,
                node_id: "n",
                role: Role::Worker,
                cluster_id: "c",
                validity: Duration::from_secs(30),
            })
            .unwrap();
        let info = CertInfo::from_pem(&pem).unwrap();
        assert!(!info.needs_renewal(SystemTime::now()));
        assert!(info.needs_renewal(SystemTime::now() + Duration::from_secs(16)));
    }

    #[test]
    fn digest_is_stable_and_differs_between_cas() {
        let a = RootCa::generate("c").unwrap();
        let b = RootCa::generate("c").unwrap();
        assert_eq!(a.digest().unwrap(), a.digest().unwrap());
        assert_ne!(a.digest().unwrap(), b.digest().unwrap());
        assert_eq!(a.digest().unwrap().len(), 64);
    }
}
