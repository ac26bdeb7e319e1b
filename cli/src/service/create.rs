//! `service create`: the spec from the flags, a generated name when none is given.

use proto::api::ServiceView;
use tonic::Code;

use crate::client::Client;
use crate::commands::CliError;

use super::flags::CreateArgs;
use super::progress::wait;
use super::spec::build_spec;

const ADJECTIVES: &[&str] = &[
    "amber", "brave", "calm", "clever", "cosy", "dapper", "eager", "fancy", "gentle", "happy",
    "jolly", "keen", "lively", "lucid", "merry", "nimble", "noble", "plucky", "proud", "quick",
    "quiet", "rapid", "serene", "shiny", "sleek", "steady", "sunny", "swift", "tidy", "vivid",
    "witty", "zesty",
];
const NOUNS: &[&str] = &[
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

/// `service create`: create, print the id, wait for the service to converge (unless
/// `--detach`); a generated name already taken is generated again.
pub(super) async fn create(c: &Client, a: CreateArgs) -> Result<(), CliError> {
    let generated = a.name.is_none();
    let mut attempt = 0;
    let view: ServiceView = loop {
        let name = a.name.clone().unwrap_or_else(generate_name);
        let spec = build_spec(&a, name).map_err(|e| CliError(format!("Error: {e}")))?;
        match c.create_service(&spec).await {
            Err(e) if generated && e.code() == Some(Code::AlreadyExists) && attempt < 10 => {
                attempt += 1
            }
            Err(e) => return Err(e.into()),
            Ok(view) => break view,
        }
    };
    println!("{}", view.id);
    if a.detach {
        return Ok(());
    }
    wait(c, &view.id, false, view.update_status, a.quiet).await
}
