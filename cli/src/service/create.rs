//! `service create`: the spec from the flags, a generated name when none is given.

use proto::api::ServiceView;
use proto::pb;
use tonic::Code;

use crate::commands::{retry, CliError};

use super::flags::CreateArgs;
use super::progress::wait;
use super::spec::build_spec;
use super::{decode, Client};

pub(super) const ADJECTIVES: &[&str] = &[
    "amber", "brave", "calm", "clever", "cosy", "dapper", "eager", "fancy", "gentle", "happy",
    "jolly", "keen", "lively", "lucid", "merry", "nimble", "noble", "plucky", "proud", "quick",
    "quiet", "rapid", "serene", "shiny", "sleek", "steady", "sunny", "swift", "tidy", "vivid",
    "witty", "zesty",
];
pub(super) const NOUNS: &[&str] = &[
    "anchovy",
    "barracuda",
    "bass",
    "bream",
    "carp",
    "cod",
    "dory",
    "eel",
    "flounder",
    "grouper",
    "haddock",
    "halibut",
    "herring",
    "mackerel",
    "marlin",
    "minnow",
    "mullet",
    "perch",
    "pike",
    "pollock",
    "salmon",
    "sardine",
    "shad",
    "smelt",
    "snapper",
    "sole",
    "sprat",
    "sturgeon",
    "tarpon",
    "trout",
    "tuna",
    "turbot",
];

/// A name like Docker's generated ones: `adjective_noun`.
pub fn generate_name() -> String {
    use rand::seq::SliceRandom;
    let mut rng = rand::thread_rng();
    format!(
        "{}_{}",
        ADJECTIVES.choose(&mut rng).unwrap_or(&"shy"),
        NOUNS.choose(&mut rng).unwrap_or(&"fish")
    )
}

pub(super) async fn create(c: &Client, a: CreateArgs) -> Result<(), CliError> {
    let generated = a.name.is_none();
    let mut attempt = 0;
    let view: ServiceView = loop {
        let name = a.name.clone().unwrap_or_else(generate_name);
        let spec = build_spec(&a, name).map_err(|e| CliError(format!("Error: {e}")))?;
        let spec_json = serde_json::to_string(&spec)
            .map_err(|e| CliError(format!("Error: cannot encode the spec: {e}")))?;
        let r = retry(|| {
            let mut c = c.clone();
            let spec_json = spec_json.clone();
            async move {
                c.create_service(pb::ServiceSpecRequest { spec_json })
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await;
        match r {
            Err(s) if generated && s.code() == Code::AlreadyExists && attempt < 10 => attempt += 1,
            Err(s) => return Err(s.into()),
            Ok(doc) => break decode(doc)?,
        }
    };
    println!("{}", view.id);
    if a.detach {
        return Ok(());
    }
    wait(c, &view.id, false, view.update_status, a.quiet).await
}
