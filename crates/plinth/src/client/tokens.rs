//! `plinth token list|create|revoke`: API tokens (admins only). A token's secret is printed
//! once, when it is made, on standard output alone (so `TOKEN=$(plinth token create ...)`
//! works); what it is goes to standard error.

use clap::Subcommand;
use plinth_types::Role;
use plinth_types::api::{TokenCreate, TokenInfo};

use super::Api;
use super::output::{Output, dash, table};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Every token: role, last use, expiry, revocation.
    List,
    /// Make a token; prints its secret, which is not stored and cannot be shown again.
    Create {
        name: String,
        /// admin, operator, client or viewer.
        #[arg(long)]
        role: Role,
        /// Lifetime: a number with s, m, h, d or w (e.g. 30d, 12h); unset: never expires.
        #[arg(long, value_parser = parse_lifetime)]
        expires_in: Option<u64>,
    },
    /// Revoke a token: it stops working at once.
    Revoke { name: String },
}

/// `90s`, `45m`, `12h`, `30d`, `2w` in seconds.
pub fn parse_lifetime(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit, e.g. 30d or 12h"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "{s:?}: the unit is one of s, m, h, d, w (e.g. 30d)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too long"))
}

fn rows(ts: &[TokenInfo]) -> Vec<Vec<String>> {
    let now = chrono::Utc::now();
    ts.iter()
        .map(|t| {
            let status = if t.revoked_at.is_some() {
                "revoked"
            } else if t.expires_at.is_some_and(|at| at <= now) {
                "expired"
            } else {
                "live"
            };
            let time = |v: Option<chrono::DateTime<chrono::Utc>>| {
                dash(v.map(|t| t.format("%Y-%m-%d %H:%M").to_string()))
            };
            vec![
                t.name.clone(),
                t.role.to_string(),
                status.to_owned(),
                time(Some(t.created_at)),
                time(t.last_used_at),
                time(t.expires_at),
            ]
        })
        .collect()
}

const HEADERS: &[&str] = &["NAME", "ROLE", "STATUS", "CREATED", "LAST_USED", "EXPIRES"];

pub async fn run(api: &Api, cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::List => {
            let all = api.client.list_tokens().await?;
            if api.output == Output::Json {
                return api.print_json(&all);
            }
            table(HEADERS, rows(&all));
        }
        TokenCommand::Create {
            name,
            role,
            expires_in,
        } => {
            let made = api
                .client
                .create_token(&TokenCreate {
                    name,
                    role,
                    expires_in_secs: expires_in,
                })
                .await?;
            if api.output == Output::Json {
                return api.print_json(&made);
            }
            eprintln!(
                "token {} (role {}){}; the secret is shown only now:",
                made.token.name,
                made.token.role,
                made.token
                    .expires_at
                    .map(|at| format!(", expires {}", at.format("%Y-%m-%d %H:%M UTC")))
                    .unwrap_or_default()
            );
            println!("{}", made.secret);
        }
        TokenCommand::Revoke { name } => {
            let t = api.client.revoke_token(&name).await?;
            if api.output == Output::Json {
                return api.print_json(&t);
            }
            table(HEADERS, rows(&[t]));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_lifetime;

    #[test]
    fn lifetimes() {
        assert_eq!(parse_lifetime("30d"), Ok(30 * 86_400));
        assert_eq!(parse_lifetime("12h"), Ok(12 * 3600));
        assert_eq!(parse_lifetime("90s"), Ok(90));
        assert_eq!(parse_lifetime("2w"), Ok(14 * 86_400));
        assert!(parse_lifetime("30").unwrap_err().contains("unit"));
        assert!(parse_lifetime("d").unwrap_err().contains("number"));
        assert!(parse_lifetime("3y").unwrap_err().contains("unit"));
        assert!(parse_lifetime("99999999999999999999w").is_err());
    }
}
