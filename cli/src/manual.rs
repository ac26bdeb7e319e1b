//! `shoal completion SHELL` and `shoal man`: shell completion scripts and man pages, both
//! made from the same command definitions the CLI parses with (clap_complete, clap_mangen).

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use crate::commands::{Cli, CliError};

/// The shells `shoal completion` writes a script for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
    Powershell,
}

/// Writes the completion script for `shell` to `out`.
pub fn completion(shell: CompletionShell, out: &mut dyn Write) -> Result<(), CliError> {
    use clap_complete::Shell;
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
        CompletionShell::Powershell => Shell::PowerShell,
    };
    // Made in memory first: the generator panics on a failed write (`| head`).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "shoal", &mut script);
    written(out.write_all(&script), "the completion script")
}

/// The man page of `shoal` itself, as roff.
pub fn man_page(out: &mut dyn Write) -> Result<(), CliError> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .map_err(|e| CliError(format!("Error: making the man page: {e}")))?;
    written(out.write_all(&page), "the man page")
}

/// A write to stdout: a reader that went away (`| head`) is no error.
fn written(r: std::io::Result<()>, what: &str) -> Result<(), CliError> {
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError(format!("Error: writing {what}: {e}")))
        }
        _ => Ok(()),
    }
}

/// Every man page — `shoal.1`, `shoal-service.1`, `shoal-service-create.1`, … (one per
/// command, hidden ones left out) — written into `dir`, which must exist. Returns how many.
pub fn man_pages(dir: &Path) -> Result<usize, CliError> {
    if !dir.is_dir() {
        return Err(CliError(format!(
            "Error: {} is not a directory",
            dir.display()
        )));
    }
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = 0;
    write_pages(&cmd, "shoal", dir, &mut written)?;
    Ok(written)
}

fn write_pages(
    cmd: &clap::Command,
    name: &str,
    dir: &Path,
    written: &mut usize,
) -> Result<(), CliError> {
    let page = cmd.clone().name(name.to_string());
    let path = dir.join(format!("{name}.1"));
    let mut file = std::fs::File::create(&path)
        .map_err(|e| CliError(format!("Error: cannot create {}: {e}", path.display())))?;
    clap_mangen::Man::new(page)
        .render(&mut file)
        .map_err(|e| CliError(format!("Error: cannot write {}: {e}", path.display())))?;
    *written += 1;
    // clap's own `help` subcommands get no page: `--help` is in every page.
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command and every argument a user can see says what it is for (`--help`,
    /// completions and man pages all show it).
    #[test]
    fn every_command_and_flag_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let builtin = matches!(a.get_id().as_str(), "help" | "version");
                if a.is_hide_set() || builtin {
                    continue;
                }
                if a.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                let name = format!("{path} {}", sub.get_name());
                if sub
                    .get_about()
                    .is_none_or(|h| h.to_string().trim().is_empty())
                {
                    missing.push(name.clone());
                }
                walk(sub, &name, missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "shoal", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    #[test]
    fn completion_scripts_name_the_commands_and_their_flags() {
        for shell in [
            CompletionShell::Bash,
            CompletionShell::Zsh,
            CompletionShell::Fish,
            CompletionShell::Powershell,
        ] {
            let mut out = Vec::new();
            completion(shell, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            for word in ["service", "update-parallelism", "join-token"] {
                assert!(text.contains(word), "{shell:?} script lacks {word}");
            }
        }
    }

    #[test]
    fn a_man_page_for_every_visible_command() {
        let dir = tempfile::tempdir().unwrap();
        let n = man_pages(dir.path()).unwrap();
        assert!(n > 40, "{n} pages");
        let create = std::fs::read_to_string(dir.path().join("shoal-service-create.1")).unwrap();
        assert!(create.contains("update\\-parallelism"), "{create}");
        assert!(dir.path().join("shoal-swarm-join-token.1").exists());
        assert!(!dir.path().join("shoal-shim.1").exists(), "hidden");
        assert!(
            !dir.path().join("shoal-service-help.1").exists(),
            "clap's help"
        );
        let mut top = Vec::new();
        man_page(&mut top).unwrap();
        assert!(String::from_utf8(top).unwrap().starts_with(".ie"));
        let e = man_pages(&dir.path().join("nope")).unwrap_err();
        assert!(e.0.ends_with("is not a directory"), "{}", e.0);
    }
}
