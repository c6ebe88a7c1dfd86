//! `jst2kd permissions`: the RabbitMQ users of one pipeline and what each may do, for the
//! configured `amqp.prefix`, as `rabbitmqctl set_permissions` lines or as the `permissions`
//! of a RabbitMQ definitions file.

use clap::{Args, ValueEnum};
use common::queue::AmqpConfig;
use common::queue::permissions::{Permissions, users};
use common::worker::{self, WorkerArgs};
use serde_json::json;

#[derive(Args)]
pub struct PermissionsArgs {
    #[command(flatten)]
    worker: WorkerArgs,
    /// The virtual host the pipeline uses.
    #[arg(long, default_value = "/")]
    vhost: String,
    /// The queue prefix (instead of the configuration's `amqp.prefix`, which is then not
    /// read: no `amqp.url_file` needs to exist here).
    #[arg(long)]
    prefix: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `rabbitmqctl` commands, with a comment on each user.
    Text,
    /// A JSON array of `{user, vhost, configure, write, read}`, as in a definitions file.
    Json,
}

pub fn run(args: PermissionsArgs) -> anyhow::Result<()> {
    let prefix = match args.prefix {
        Some(prefix) => prefix,
        None => {
            let (_, layers) = worker::load_config(&args.worker)?;
            layers.section::<AmqpConfig>()?.prefix
        }
    };
    let users = users(&prefix);
    match args.format {
        Format::Json => {
            let entries: Vec<_> = users
                .iter()
                .map(|(user, p)| {
                    json!({
                        "user": user,
                        "vhost": args.vhost,
                        "configure": p.configure,
                        "write": p.write,
                        "read": p.read,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&entries)?);
        }
        Format::Text => print!("{}", text(&prefix, &args.vhost, &users)),
    }
    Ok(())
}

fn text(prefix: &str, vhost: &str, users: &[(String, Permissions)]) -> String {
    let mut out = format!(
        "# RabbitMQ users of the pipeline with amqp.prefix = {prefix:?} in virtual host {vhost:?}.\n\
         # Create each user once with a password of its own, e.g.\n\
         #   rabbitmqctl add_user jst2kd-producer \"$(cat producer-password)\"\n\
         # then give it its permissions (configure, write, read):\n"
    );
    for (user, p) in users {
        let what = match user.as_str() {
            "jst2kd-producer" => {
                "the producer (and jst2kd backfill, run beside it): the work exchange, counts, the outcome log, the control queue, its lock, a reply queue"
            }
            "jst2kd-transformer" => {
                "the transformer: counts and its retry tiers, bills, the dead letters, the outcome log"
            }
            "jst2kd-loader" => {
                "the loader: bills and its retry tiers, the dead letters, the outcome log"
            }
            "jst2kd-keda" => "KEDA: queue depths (passive declarations), nothing else",
            _ => {
                "the jst2kd commands (dlq, trace, reconcile, backfill, check): everything under the prefix"
            }
        };
        out.push_str(&format!(
            "# {what}\nrabbitmqctl set_permissions -p {} {} {} {} {}\n",
            quote(vhost),
            quote(user),
            quote(&p.configure),
            quote(&p.write),
            quote(&p.read),
        ));
    }
    out
}

/// `s` in single quotes for a POSIX shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_quote_patterns_and_names_for_the_shell() {
        let out = text("jst2kd", "/", &users("jst2kd"));
        assert!(
            out.contains(r"rabbitmqctl set_permissions -p '/' 'jst2kd-keda' '^$' '^$' '^$'"),
            "{out}"
        );
        assert_eq!(out.matches("rabbitmqctl set_permissions").count(), 5);
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
