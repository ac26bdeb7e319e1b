//! Control API for autolock: the unlock key (shown, rotated) and switching autolock on and
//! off ([`crate::keys`] explains what the unlock key protects).

use proto::pb;
use tonic::Status;

use crate::controlapi::ControlApi;
use crate::error::ApiError;
use crate::keys::UnlockKey;
use crate::manager::update_with_retry;
use crate::store::{Cluster, Object, Op, Txn};

/// Docker's refusal when autolock is off.
pub const NO_UNLOCK_KEY: &str = "no unlock key is set";

impl ControlApi {
    /// A new unlock key, sealed as the cluster object stores it.
    pub(crate) fn new_sealed_unlock_key(&self) -> Result<String, Status> {
        let key = UnlockKey::generate().map_err(ApiError::from)?;
        Ok(self.mgr.kek.seal_unlock_key(&key).map_err(ApiError::from)?)
    }

    /// Apply `swarm update --autolock` (`setting`: 0 unchanged, 1 on, 2 off) to `c`; turning
    /// it on when it is on keeps the key users already hold.
    pub(crate) fn apply_autolock(c: &mut Cluster, setting: u32, fresh: &str) {
        match setting {
            1 if c.unlock_key.is_none() => c.unlock_key = Some(fresh.to_string()),
            2 => c.unlock_key = None,
            _ => {}
        }
    }

    pub fn validate_autolock(setting: u32) -> Result<(), Status> {
        if setting > 2 {
            return Err(ApiError::InvalidArgument(format!(
                "invalid autolock setting {setting}: 0 (unchanged), 1 (on) or 2 (off)"
            ))
            .into());
        }
        Ok(())
    }

    /// The cluster's unlock key, after rotating it if asked.
    pub async fn get_unlock_key(
        &self,
        req: pb::GetUnlockKeyRequest,
    ) -> Result<pb::UnlockKeyResponse, Status> {
        if req.rotate {
            let fresh = self.new_sealed_unlock_key()?;
            update_with_retry(&self.mgr, |d| {
                let mut c = d.cluster.clone().ok_or_else(not_initialised)?;
                if c.unlock_key.is_none() {
                    return Err(ApiError::FailedPrecondition(NO_UNLOCK_KEY.into()).into());
                }
                c.unlock_key = Some(fresh.clone());
                Ok(Txn::new(vec![Op::Update(Object::Cluster(c))]))
            })
            .await?;
            tracing::info!("unlock key rotated");
        } else {
            self.mgr.linearizable().await?;
        }
        let sealed = self
            .mgr
            .store
            .view(|d| d.cluster.as_ref().map(|c| c.unlock_key.clone()))
            .ok_or_else(not_initialised)?
            .ok_or_else(|| ApiError::FailedPrecondition(NO_UNLOCK_KEY.into()))?;
        let key = self
            .mgr
            .kek
            .open_unlock_key(&sealed)
            .map_err(ApiError::from)?;
        Ok(pb::UnlockKeyResponse {
            unlock_key: key.to_string(),
        })
    }
}

fn not_initialised() -> Status {
    ApiError::NotInitialised.into()
}
