//! Control API: overlay networks (`network create|ls|inspect|rm`).

use proto::pb;
use tonic::Status;

use crate::controlapi::ControlApi;

impl ControlApi {
    pub async fn create_network(&self, req: pb::NetworkSpecRequest) -> Result<pb::JsonDoc, Status> {
        if let Some(mut c) = self.leader_client()? {
            return Ok(c.create_network(req).await?.into_inner());
        }
        Err(Status::unimplemented("networks are not implemented yet"))
    }

    pub async fn list_networks(&self) -> Result<pb::JsonDoc, Status> {
        if let Some(mut c) = self.leader_client()? {
            return Ok(c.list_networks(pb::Empty {}).await?.into_inner());
        }
        Err(Status::unimplemented("networks are not implemented yet"))
    }

    pub async fn get_network(&self, req: pb::GetNetworkRequest) -> Result<pb::JsonDoc, Status> {
        if let Some(mut c) = self.leader_client()? {
            return Ok(c.get_network(req).await?.into_inner());
        }
        Err(Status::unimplemented("networks are not implemented yet"))
    }

    pub async fn remove_network(&self, req: pb::GetNetworkRequest) -> Result<pb::Empty, Status> {
        if let Some(mut c) = self.leader_client()? {
            return Ok(c.remove_network(req).await?.into_inner());
        }
        Err(Status::unimplemented("networks are not implemented yet"))
    }
}
