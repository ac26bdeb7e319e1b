//! `service update`, `rollback` and `scale`: read the spec, edit it, write it back, then wait
//! for the service to converge.

use proto::api::ServiceView;
use proto::spec::ServiceSpec;

use crate::client::Client;
use crate::commands::CliError;

use super::first_error;
use super::flags::UpdateArgs;
use super::parse::parse_scale;
use super::progress::wait;
use super::spec::{scale_spec, update_needs_networks, update_spec};

/// GetService, change its spec with `edit`, UpdateService with the version read; again if
/// someone else changed the service meanwhile.
async fn edit_service<E>(c: &Client, id: &str, edit: E) -> Result<ServiceView, CliError>
where
    E: Fn(ServiceSpec) -> Result<ServiceSpec, String>,
{
    let mut attempt = 0;
    loop {
        let view = c.get_service(id).await?;
        let spec = edit(view.spec.clone()).map_err(|e| CliError(format!("Error: {e}")))?;
        match c.update_service(&view.id, view.version, Some(&spec)).await {
            Err(e) if attempt < 5 && e.to_string().contains("changed since it was read") => {
                attempt += 1
            }
            r => return Ok(r?),
        }
    }
}

/// `service update SERVICE`: the flags applied to the current spec (or `--rollback`).
pub(super) async fn update(c: &Client, a: UpdateArgs) -> Result<(), CliError> {
    let v = if a.rollback {
        c.update_service(&a.service, 0, None).await?
    } else {
        let nets = if update_needs_networks(&a) {
            c.list_networks().await?
        } else {
            Vec::new()
        };
        edit_service(c, &a.service, |spec| update_spec(spec, &a, &nets)).await?
    };
    println!("{}", a.service);
    if a.detach {
        return Ok(());
    }
    wait(c, &v.id, a.rollback, v.update_status, a.quiet).await
}

/// `service rollback SERVICE`: back to the previous spec.
pub(super) async fn rollback(
    c: &Client,
    service: &str,
    detach: bool,
    quiet: bool,
) -> Result<(), CliError> {
    let v = c.update_service(service, 0, None).await?;
    println!("{service}");
    if detach {
        return Ok(());
    }
    wait(c, &v.id, true, v.update_status, quiet).await
}

/// `service scale S=N …`: every service scaled first, then each waited for.
pub(super) async fn scale(c: &Client, detach: bool, scales: &[String]) -> Result<(), CliError> {
    let mut parsed = Vec::new();
    for s in scales {
        parsed.push(parse_scale(s).map_err(|e| CliError(format!("Error: {e}")))?);
    }
    let mut errs = Vec::new();
    let mut done = Vec::new();
    for (name, n) in parsed {
        match edit_service(c, &name, |spec| scale_spec(spec, n)).await {
            Ok(v) => {
                println!("{name} scaled to {n}");
                done.push((v.id, v.update_status));
            }
            Err(e) => errs.push(e),
        }
    }
    if !detach {
        for (id, baseline) in done {
            if let Err(e) = wait(c, &id, false, baseline, false).await {
                errs.push(e);
            }
        }
    }
    first_error(errs)
}
