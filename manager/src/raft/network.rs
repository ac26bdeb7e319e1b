//! Raft messages over gRPC (mutual TLS, manager certificates only).
//!
//! openraft's request and response types are carried as JSON inside `RaftPayload`; the
//! server's answer is the serialised `Result` of the local raft call, so a remote raft error
//! reaches the sender as such rather than as a transport failure.

use std::sync::Arc;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use proto::pb;
use proto::pb::raft_client::RaftClient;
use proto::transport::{client_config, tls_channel, Credentials};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::{NodeId, Raft, TypeConfig};
use crate::auth::Authorizer;

/// Creates a client per peer; peers are dialled lazily, so an unreachable one costs nothing
/// until raft sends to it.
#[derive(Clone)]
pub struct Network {
    creds: Arc<Credentials>,
}

impl Network {
    pub fn new(creds: Arc<Credentials>) -> Network {
        Network { creds }
    }
}

pub struct PeerClient {
    target: NodeId,
    addr: String,
    client: Option<RaftClient<tonic::transport::Channel>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let client = self.creds.get().and_then(|id| {
            let cfg = client_config(&id.ca_pem, Some(&id)).ok()?;
            let ch = tls_channel(&node.addr, cfg).ok()?;
            Some(
                RaftClient::new(ch)
                    .max_decoding_message_size(256 << 20)
                    .max_encoding_message_size(256 << 20),
            )
        });
        PeerClient {
            target,
            addr: node.addr.clone(),
            client,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("raft peer {addr}: {msg}")]
struct PeerError {
    addr: String,
    msg: String,
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        which: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = serde_json::to_vec(req).map_err(|e| {
            RPCError::Network(NetworkError::new(&PeerError {
                addr: self.addr.clone(),
                msg: e.to_string(),
            }))
        })?;
        self.send(which, data, option).await
    }

    /// Send an encoded request.
    async fn send<Resp, E>(
        &mut self,
        which: &'static str,
        data: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let err = |msg: String| PeerError {
            addr: self.addr.clone(),
            msg,
        };
        let Some(client) = self.client.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(&err(
                "no credentials to dial with".into(),
            ))));
        };
        let mut request = Request::new(pb::RaftPayload { data });
        request.set_timeout(option.hard_ttl());
        let fut = match which {
            "append" => client.append_entries(request).await,
            "vote" => client.vote(request).await,
            _ => client.install_snapshot(request).await,
        };
        let payload = match fut {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&err(s
                    .message()
                    .to_string()))))
            }
            Err(s) => return Err(RPCError::Network(NetworkError::new(&err(s.to_string())))),
        };
        let res: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&payload.data)
            .map_err(|e| RPCError::Network(NetworkError::new(&err(e.to_string()))))?;
        res.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let data = serde_json::to_vec(&rpc).map_err(|e| {
            RPCError::Network(NetworkError::new(&PeerError {
                addr: self.addr.clone(),
                msg: e.to_string(),
            }))
        })?;
        if let Some(hint) = entries_hint(rpc.entries.len(), data.len()) {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        self.send("append", data, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }
}

/// The gRPC side: hands incoming raft messages to the local raft node.
pub struct RaftService {
    raft: Raft,
    auth: Authorizer,
}

pub fn serve_raft(raft: Raft, auth: Authorizer) -> pb::raft_server::RaftServer<RaftService> {
    pb::raft_server::RaftServer::new(RaftService { raft, auth })
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20)
}

fn decode<T: DeserializeOwned>(req: Request<pb::RaftPayload>) -> Result<T, Status> {
    serde_json::from_slice(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("malformed raft message: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<pb::RaftPayload>, Status> {
    let data = serde_json::to_vec(v).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(pb::RaftPayload { data }))
}

/// A candidate that is no member of this node's raft group (a removed manager, or one left
/// behind by `swarm init --force-new-cluster` that came back with its old state) gets no
/// answer: its higher term would depose this group's leader, and a vote from here could
/// make it leader of its old group over this node's log.
pub(super) fn outside_candidate(raft: &Raft, rpc: &VoteRequest<NodeId>) -> Result<(), Status> {
    let Some(candidate) = rpc.vote.leader_id().voted_for() else {
        return Ok(());
    };
    let (_, nodes) = super::membership(raft);
    if nodes.is_empty() || nodes.contains_key(&candidate) {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "raft node {candidate} is not a member of this raft group: it was removed, or the swarm was recovered without it"
    )))
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.auth.manager(&req)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req)?;
        for e in &rpc.entries {
            if let openraft::EntryPayload::Normal(txn) = &e.payload {
                txn.check().map_err(|err| {
                    Status::invalid_argument(format!(
                        "malformed raft message: entry {}: {err}",
                        e.log_id.index
                    ))
                })?;
            }
        }
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.auth.manager(&req)?;
        let rpc: VoteRequest<NodeId> = decode(req)?;
        outside_candidate(&self.raft, &rpc)?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: Request<pb::RaftPayload>,
    ) -> Result<Response<pb::RaftPayload>, Status> {
        self.auth.manager(&req)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req)?;
        encode(&self.raft.install_snapshot(rpc).await)
    }
}

/// Bytes an AppendEntries carries at most, unless it holds a single entry. openraft gives
/// every AppendEntries the heartbeat's timeout whatever its size: a follower catching up on
/// hundreds of large entries in one message would time out every time and never catch up.
pub const MAX_APPEND_BYTES: usize = 1 << 20;

/// How many entries to send at once instead, when `entries` encoded as `bytes` are too many.
pub fn entries_hint(entries: usize, bytes: usize) -> Option<u64> {
    if entries <= 1 || bytes <= MAX_APPEND_BYTES {
        return None;
    }
    let fit = (entries as u128 * MAX_APPEND_BYTES as u128 / bytes as u128) as u64;
    Some(fit.clamp(1, entries as u64 - 1))
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn large_appends_are_split_by_the_entries_that_fit() {
        assert_eq!(entries_hint(1, 50 << 20), None, "one entry goes as it is");
        assert_eq!(entries_hint(300, 100 << 10), None);
        // 300 entries of 240 KB: 4 fit in 1 MiB.
        assert_eq!(entries_hint(300, 300 * 240 * 1024), Some(4));
        // Never 0, never all of them.
        assert_eq!(entries_hint(2, 100 << 20), Some(1));
        assert_eq!(entries_hint(3, MAX_APPEND_BYTES + 1), Some(2));
    }
}
