//! The control API's errors, and their one mapping to gRPC status codes.
//!
//! A call refuses with an [`ApiError`] that says what went wrong in the caller's terms (the
//! object's kind and name, the request field); [`From<ApiError> for Status`] decides the code.
//! The message is the error's `Display`, which the CLI prints as it comes.

use tonic::Status;

/// Why the manager refused or failed a control call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No object of `kind` answers to `name` (an id, a name or an id prefix).
    #[error("{kind} {name} not found")]
    NotFound { kind: &'static str, name: String },
    /// More than one object of `kind` answers to the id prefix `name`.
    #[error("{kind} {name} is ambiguous{hint}")]
    Ambiguous {
        kind: &'static str,
        name: String,
        /// Appended as it stands (e.g. ": use more of its id").
        hint: &'static str,
    },
    /// An object of `kind` named `name` exists already.
    #[error("{kind} {name} already exists{hint}")]
    AlreadyExists {
        kind: &'static str,
        name: String,
        /// Appended as it stands (e.g. "; choose another name").
        hint: &'static str,
    },
    /// The request field `field` holds a value the API does not accept.
    #[error("{field}: {reason}")]
    InvalidField { field: String, reason: String },
    /// The request is malformed in a way no single field explains.
    #[error("{0}")]
    InvalidArgument(String),
    /// The object changed since the caller read it, or a concurrent change won: retry.
    #[error("{0}")]
    Conflict(String),
    /// The request is valid but the cluster's state refuses it now (in use, last manager…).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A resource is being set up by a concurrent call: retry.
    #[error("{0}")]
    Busy(String),
    /// The swarm has no cluster object yet.
    #[error("the swarm is not initialised yet")]
    NotInitialised,
    /// The write could not be committed now (raft failed or timed out): retry.
    #[error("{0}")]
    Unavailable(String),
    /// No leader is known and none can be elected: too few managers reachable.
    #[error("{0}")]
    NoQuorum(String),
    /// An election is under way.
    #[error("no leader is elected yet; retry shortly")]
    NoLeaderYet,
    /// This manager does not lead; `addr` does.
    #[error("this manager is not the leader; the leader is {addr}")]
    NotLeader { addr: String },
    /// The manager failed: `context` says at what.
    #[error("{context}: {source}")]
    Internal {
        context: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ApiError {
        ApiError::InvalidField {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn internal(
        context: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> ApiError {
        ApiError::Internal {
            context,
            source: source.into(),
        }
    }

    /// The request field an [`ApiError::InvalidField`] names.
    pub fn field(&self) -> Option<&str> {
        match self {
            ApiError::InvalidField { field, .. } => Some(field),
            _ => None,
        }
    }

    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            ApiError::NotFound { .. } => Code::NotFound,
            ApiError::Ambiguous { .. }
            | ApiError::InvalidField { .. }
            | ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::AlreadyExists { .. } => Code::AlreadyExists,
            ApiError::Conflict(_) => Code::Aborted,
            ApiError::FailedPrecondition(_) | ApiError::NotInitialised => Code::FailedPrecondition,
            ApiError::Busy(_)
            | ApiError::Unavailable(_)
            | ApiError::NoQuorum(_)
            | ApiError::NoLeaderYet
            | ApiError::NotLeader { .. } => Code::Unavailable,
            ApiError::Internal { .. } => Code::Internal,
        }
    }
}

impl From<crate::store::FindError> for ApiError {
    fn from(e: crate::store::FindError) -> ApiError {
        use crate::store::FindError;
        match e {
            FindError::NotFound(name) => ApiError::NotFound { kind: "node", name },
            FindError::Ambiguous(name) => ApiError::Ambiguous {
                kind: "node",
                name,
                hint: ": it matches more than one node",
            },
        }
    }
}

/// A write the store refused, in the caller's terms.
impl From<crate::store::TxnError> for ApiError {
    fn from(e: crate::store::TxnError) -> ApiError {
        use crate::store::TxnError;
        match e {
            TxnError::NotFound { kind, id } => ApiError::NotFound {
                kind: kind.noun(),
                name: id,
            },
            TxnError::Exists { kind, id } => ApiError::AlreadyExists {
                kind: kind.noun(),
                name: id,
                hint: "",
            },
            TxnError::Conflict { .. }
            | TxnError::Placed { .. }
            | TxnError::AddressInUse { .. }
            | TxnError::NetworkClash { .. } => ApiError::Conflict(e.to_string()),
            TxnError::PortInUse { .. }
            | TxnError::Backwards { .. }
            | TxnError::NodeUnavailable { .. } => ApiError::FailedPrecondition(e.to_string()),
        }
    }
}

impl From<crate::keys::KeyError> for ApiError {
    fn from(e: crate::keys::KeyError) -> ApiError {
        ApiError::internal("the cluster's keys", e)
    }
}

/// The metadata key that carries the request field an invalid-argument status names, so that
/// a client can point at its own input (the CLI names its flag) without parsing the message.
pub const FIELD_METADATA: &str = "shoal-field";

/// The one place an [`ApiError`] becomes a gRPC status.
impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        let mut s = Status::new(e.code(), e.to_string());
        if let Some(v) = e
            .field()
            .and_then(|f| tonic::metadata::MetadataValue::try_from(f).ok())
        {
            s.metadata_mut().insert(FIELD_METADATA, v);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_error_has_its_code_and_message() {
        let io = || std::io::Error::other("disk full");
        let cases: Vec<(ApiError, Code, &str)> = vec![
            (
                ApiError::NotFound {
                    kind: "service",
                    name: "web".into(),
                },
                Code::NotFound,
                "service web not found",
            ),
            (
                ApiError::Ambiguous {
                    kind: "network",
                    name: "ab".into(),
                    hint: ": use more of its id",
                },
                Code::InvalidArgument,
                "network ab is ambiguous: use more of its id",
            ),
            (
                ApiError::AlreadyExists {
                    kind: "network",
                    name: "front".into(),
                    hint: "; choose another name",
                },
                Code::AlreadyExists,
                "network front already exists; choose another name",
            ),
            (
                ApiError::invalid("spec.task.mounts[0].target", "must be an absolute path"),
                Code::InvalidArgument,
                "spec.task.mounts[0].target: must be an absolute path",
            ),
            (
                ApiError::InvalidArgument("malformed service spec".into()),
                Code::InvalidArgument,
                "malformed service spec",
            ),
            (
                ApiError::Conflict("service web changed since it was read".into()),
                Code::Aborted,
                "service web changed since it was read",
            ),
            (
                ApiError::FailedPrecondition("network n is in use".into()),
                Code::FailedPrecondition,
                "network n is in use",
            ),
            (
                ApiError::Busy("the cluster's data key is being created; retry".into()),
                Code::Unavailable,
                "the cluster's data key is being created; retry",
            ),
            (
                ApiError::NotInitialised,
                Code::FailedPrecondition,
                "the swarm is not initialised yet",
            ),
            (
                ApiError::NoQuorum(crate::manager::no_quorum(1, 3)),
                Code::Unavailable,
                "no quorum: 1 of 3 managers reachable",
            ),
            (
                ApiError::NoLeaderYet,
                Code::Unavailable,
                "no leader is elected yet; retry shortly",
            ),
            (
                ApiError::NotLeader {
                    addr: "10.0.0.1:2377".into(),
                },
                Code::Unavailable,
                "this manager is not the leader; the leader is 10.0.0.1:2377",
            ),
            (
                ApiError::internal("sealing the secret", io()),
                Code::Internal,
                "sealing the secret: disk full",
            ),
        ];
        let node = |e: crate::store::FindError| Status::from(ApiError::from(e));
        let s = node(crate::store::FindError::NotFound("w1".into()));
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "node w1 not found")
        );
        let s = node(crate::store::FindError::Ambiguous("w".into()));
        assert_eq!(
            (s.code(), s.message()),
            (
                Code::InvalidArgument,
                "node w is ambiguous: it matches more than one node"
            )
        );
        let refused = |e: crate::store::TxnError| {
            let s = Status::from(ApiError::from(e));
            (s.code(), s.message().to_string())
        };
        use crate::store::{Kind, TxnError};
        assert_eq!(
            refused(TxnError::NotFound {
                kind: Kind::Service,
                id: "web".into()
            }),
            (Code::NotFound, "service web not found".into())
        );
        assert_eq!(
            refused(TxnError::Exists {
                kind: Kind::Secret,
                id: "pw".into()
            }),
            (Code::AlreadyExists, "secret pw already exists".into())
        );
        assert_eq!(
            refused(TxnError::PortInUse {
                port: 80,
                protocol: "tcp".into(),
                service: "web".into()
            })
            .0,
            Code::FailedPrecondition
        );
        for (e, code, message) in cases {
            let field = e.field().map(str::to_string);
            let s = Status::from(e);
            assert_eq!((s.code(), s.message()), (code, message));
            let meta = s.metadata().get(FIELD_METADATA).map(|v| v.to_str().ok());
            assert_eq!(meta, field.as_deref().map(Some), "{message}");
        }
    }
}
