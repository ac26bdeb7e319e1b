//! `service update`, `rollback` and `scale`: read the spec, edit it, write it back.

use proto::api::ServiceView;
use proto::pb;
use proto::spec::ServiceSpec;

use crate::commands::CliError;

use super::{get_service, update_service, Client};

/// GetService, change its spec with `edit`, UpdateService with the version read; again if
/// someone else changed the service meanwhile.
pub(super) async fn edit_service<E>(c: &Client, id: &str, edit: E) -> Result<ServiceView, CliError>
where
    E: Fn(ServiceSpec) -> Result<ServiceSpec, String>,
{
    let mut attempt = 0;
    loop {
        let view = get_service(c, id).await?;
        let spec = edit(view.spec.clone()).map_err(|e| CliError(format!("Error: {e}")))?;
        let spec_json = serde_json::to_string(&spec)
            .map_err(|e| CliError(format!("Error: cannot encode the spec: {e}")))?;
        let req = pb::UpdateServiceRequest {
            id: view.id.clone(),
            spec_json,
            rollback: false,
            version: view.version,
        };
        match update_service(c, req).await {
            Err(e) if attempt < 5 && e.0.contains("changed since it was read") => attempt += 1,
            r => return r,
        }
    }
}

pub(super) async fn rollback(c: &Client, service: &str) -> Result<ServiceView, CliError> {
    update_service(
        c,
        pb::UpdateServiceRequest {
            id: service.to_string(),
            spec_json: String::new(),
            rollback: true,
            version: 0,
        },
    )
    .await
}
