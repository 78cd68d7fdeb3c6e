//! `switchboard console hash-password | new-token`: the helpers that make what `[console]`
//! holds — an argon2 hash for a user's password (read without echo from a terminal, or a line
//! from stdin), and a new API token with the SHA-256 the config keeps (the token itself is
//! shown once, never stored).
use clap::Subcommand;
use std::io::BufRead;

use crate::auth::password::{hash_password, new_token};

#[derive(Debug, Clone, Subcommand)]
pub enum ConsoleCommand {
    /// Print an argon2 hash of a password for `[[console.users]] password_hash`.
    HashPassword,
    /// Print a new API token and the SHA-256 for `[[console.tokens]] sha256`.
    NewToken,
}

/// Runs a helper; returns what to print.
pub fn run(cmd: &ConsoleCommand) -> anyhow::Result<String> {
    match cmd {
        ConsoleCommand::HashPassword => {
            let password = read_password()?;
            if password.len() < 12 {
                anyhow::bail!("use a password of at least 12 characters");
            }
            hash_password(&password).map_err(|e| anyhow::anyhow!("cannot hash: {e}"))
        }
        ConsoleCommand::NewToken => {
            let (token, sha) = new_token();
            Ok(format!("token (give it to the script; it is not stored): {token}\nsha256 (for [[console.tokens]]): {sha}"))
        }
    }
}

fn read_password() -> anyhow::Result<String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Again: ")?;
        if first != again {
            anyhow::bail!("the two passwords differ");
        }
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
