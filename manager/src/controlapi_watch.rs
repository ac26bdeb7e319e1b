//! `WatchService`: a stream that wakes a client waiting for a service to converge as soon as
//! a committed change touches the service or its tasks, instead of the client polling on a
//! fixed period (a 250 ms poll made `service create` of 50 tasks that were running after
//! 0.55 s return after 0.77 s).
//!
//! The stream says only that something changed; the client reads the service and its tasks
//! again. Notifications are coalesced (a queue of one), so a slow reader costs nothing, and a
//! manager serves at most [`MAX_SERVICE_WATCHES`] watches at once: each one looks at every
//! committed change.

use std::pin::Pin;

use proto::pb;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;

use crate::controlapi::ControlApi;
use crate::controlapi_services::find_service;
use crate::limits::MAX_SERVICE_WATCHES;
use crate::store::{Change, Event, Kind, Object};

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::ServiceChanged, Status>> + Send>>;

/// Whether `event` may change what a client sees of service `id`: the service itself, or a
/// task of it (a deleted task names no service: counted, as a wake too many is harmless).
/// The second value: the service was removed.
fn touches(event: &Event, id: &str) -> (bool, bool) {
    let mut touched = false;
    for c in event.changes.iter() {
        match c {
            Change::Put(Object::Service(s)) if s.id == id => touched = true,
            Change::Put(Object::Task(t)) if t.service_id == id => touched = true,
            Change::Deleted {
                kind: Kind::Service,
                id: gone,
            } if gone == id => return (true, true),
            Change::Deleted {
                kind: Kind::Task, ..
            } => touched = true,
            _ => {}
        }
    }
    (touched, false)
}

impl ControlApi {
    pub async fn watch_service(&self, req: pb::GetServiceRequest) -> Result<WatchStream, Status> {
        let permit = self.mgr.watches.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "this manager already serves {MAX_SERVICE_WATCHES} service watches; poll instead"
            ))
        })?;
        self.mgr.linearizable().await?;
        let term = self
            .mgr
            .leader_token()
            .ok_or_else(|| self.mgr.not_leader())?;
        // Subscribed before the service is looked up: a change after the lookup is seen.
        let mut events = self.mgr.store.watch();
        let id = self
            .mgr
            .store
            .view(|d| find_service(d, &req.id).map(|s| s.id.clone()))?;
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(Ok(pb::ServiceChanged {
            index: 0,
            removed: false,
        }));
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                let (index, removed) = tokio::select! {
                    _ = tx.closed() => return,
                    _ = term.cancelled() => {
                        // Said, when there is room: the client watches again, or polls.
                        let _ = tx.try_send(Err(Status::unavailable(
                            "this manager no longer leads: watch again",
                        )));
                        return;
                    }
                    ev = events.recv() => match ev {
                        Ok(e) => match touches(&e, &id) {
                            (false, _) => continue,
                            (true, removed) => (e.index, removed),
                        },
                        // Changes were missed: one of them may have been this service's.
                        Err(RecvError::Lagged(_)) => (0, false),
                        Err(RecvError::Closed) => return,
                    },
                };
                // Full: the client has a wake-up pending already, which covers this one.
                let _ = tx.try_send(Ok(pb::ServiceChanged { index, removed }));
                if removed {
                    return;
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::allocator::tests::service as service_object;
    use crate::store::tests::bare_task;

    fn event(changes: Vec<Change>) -> Event {
        Event {
            index: 7,
            changes: Arc::new(changes),
            touched: Default::default(),
        }
    }

    #[test]
    fn a_watch_wakes_on_its_service_and_its_tasks_only() {
        let task = |service: &str| {
            let mut t = bare_task("t1", "n1");
            t.service_id = service.into();
            Change::Put(Object::Task(t))
        };
        let service =
            |id: &str| Change::Put(Object::Service(Box::new(service_object(id, &[], vec![]))));
        assert_eq!(touches(&event(vec![task("other")]), "s1"), (false, false));
        assert_eq!(
            touches(&event(vec![service("other")]), "s1"),
            (false, false)
        );
        assert_eq!(
            touches(&event(vec![task("other"), task("s1")]), "s1"),
            (true, false)
        );
        assert_eq!(touches(&event(vec![service("s1")]), "s1"), (true, false));
        let gone = |kind, id: &str| Change::Deleted {
            kind,
            id: id.into(),
        };
        assert_eq!(
            touches(&event(vec![gone(Kind::Service, "s1")]), "s1"),
            (true, true)
        );
        assert_eq!(
            touches(&event(vec![gone(Kind::Service, "s2")]), "s1"),
            (false, false)
        );
        assert_eq!(
            touches(&event(vec![gone(Kind::Task, "t9")]), "s1"),
            (true, false)
        );
    }
}
