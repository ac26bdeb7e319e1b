//! Unit tests of `shoal service`: flags → spec, renderings, the converge decision.

use super::create::*;
use super::inspect::*;
use super::parse::*;
use super::ports::*;
use super::progress::*;
use super::ps::*;
use super::render::*;
use super::spec::*;
use super::watch::*;
use super::*;
use crate::commands::{one_line_usage_error, Cli, Cmd};
use crate::output::*;
use clap::Parser;
use proto::api::{NetworkView, ServiceView, TaskView, UpdateStatusView};
use proto::spec::TaskStatus;
use proto::spec::*;
use serde_json::{json, Value};
use std::time::Duration;

mod create;
mod network;
mod ports;
mod progress;
mod render;
mod update;

pub(super) fn parse(args: &[&str]) -> ServiceCmd {
    let mut v = vec!["shoal", "service"];
    v.extend_from_slice(args);
    match Cli::try_parse_from(v).expect("parses").cmd {
        Cmd::Service(s) => s,
        other => panic!("not a service command: {other:?}"),
    }
}

pub(super) fn usage_error(args: &[&str]) -> String {
    let mut v = vec!["shoal", "service"];
    v.extend_from_slice(args);
    let e = Cli::try_parse_from(v).expect_err("should not parse");
    one_line_usage_error(&e.render().to_string())
}

pub(super) fn create_spec(args: &[&str]) -> Result<ServiceSpec, String> {
    let mut v = vec!["create"];
    v.extend_from_slice(args);
    match parse(&v) {
        ServiceCmd::Create(a) => build_spec(&a, a.name.clone().unwrap_or("gen".into())),
        _ => unreachable!(),
    }
}

pub(super) fn update(spec: ServiceSpec, args: &[&str]) -> Result<ServiceSpec, String> {
    let mut v = vec!["update"];
    v.extend_from_slice(args);
    v.push("web");
    match parse(&v) {
        ServiceCmd::Update(a) => update_spec(spec, &a, &[]),
        _ => unreachable!(),
    }
}

pub(super) fn base() -> ServiceSpec {
    create_spec(&[
        "--name",
        "web",
        "--env",
        "A=1",
        "--env",
        "B=2",
        "--label",
        "x=1",
        "--constraint",
        "node.role==worker",
        "busybox",
    ])
    .unwrap()
}

pub(super) fn view(name: &str, mode: ServiceMode, running: u64, desired: u64) -> ServiceView {
    let mut spec = base();
    spec.name = name.into();
    spec.mode = mode;
    ServiceView {
        id: format!("{name}0123456789abcdefghijklmn"),
        version: 3,
        spec,
        spec_version: 1,
        previous_spec: None,
        update_status: None,
        created_at_ms: 0,
        updated_at_ms: 0,
        running,
        desired,
        completed: 0,
        endpoint: Default::default(),
    }
}

pub(super) fn port(published: u16, target: u16) -> PortConfig {
    PortConfig {
        protocol: PortProtocol::Tcp,
        target_port: target,
        published_port: published,
        publish_mode: PublishMode::Ingress,
    }
}

pub(super) fn ports(s: &str) -> Vec<PortConfig> {
    parse_publish(s).unwrap().0
}

pub(super) fn net(id: &str, name: &str) -> NetworkView {
    NetworkView {
        id: id.into(),
        version: 1,
        spec: proto::spec::NetworkSpec {
            name: name.into(),
            driver: "overlay".into(),
            ..Default::default()
        },
        vni: 4097,
        subnet: "10.0.1.0/24".into(),
        gateway: "10.0.1.1".into(),
        created_at_ms: 0,
        updated_at_ms: 0,
        services: vec![],
    }
}

pub(super) fn task(
    id: &str,
    slot: u64,
    node: &str,
    desired: TaskState,
    state: TaskState,
    created: i64,
) -> TaskView {
    TaskView {
        id: format!("{id}abcdefghijklmnopqrstuvw"),
        service_id: "svc".into(),
        service_name: "web".into(),
        slot,
        node_id: node.into(),
        node_hostname: format!("host-{node}"),
        spec: base().task,
        spec_version: 1,
        desired_state: desired,
        status: TaskStatus {
            state,
            message: String::new(),
            err: String::new(),
            exit_code: None,
            timestamp_ms: created,
        },
        created_at_ms: created,
        networks: vec![],
    }
}

pub(super) fn running(slot: u64, spec: &TaskSpec) -> TaskView {
    let mut t = task(
        &format!("s{slot}"),
        slot,
        "n1",
        TaskState::Running,
        TaskState::Running,
        slot as i64,
    );
    t.spec = spec.clone();
    t
}

pub(super) fn status(state: &str, started: i64) -> Option<UpdateStatusView> {
    Some(UpdateStatusView {
        state: state.into(),
        started_ms: started,
        completed_ms: 0,
        message: format!("{state} msg"),
    })
}
