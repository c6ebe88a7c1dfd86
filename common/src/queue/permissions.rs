//! The RabbitMQ permissions each user of a pipeline needs: `configure`, `write` and `read`
//! regular expressions over the names of one prefix (`jst2kd permissions` prints them as
//! `rabbitmqctl set_permissions` lines; compose and Kubernetes ship them for `jst2kd`).
//!
//! What RabbitMQ checks (<https://www.rabbitmq.com/docs/access-control#authorisation>), and
//! seen on this machine's RabbitMQ 3.10 with a user of each set below:
//! - declaring a queue or an exchange needs `configure` on it, even when it exists with the
//!   same arguments; a passive declaration (a depth read, KEDA's) needs nothing;
//! - declaring a queue with `x-dead-letter-exchange` also needs `write` on that exchange and
//!   `read` on the queue itself;
//! - binding a queue needs `write` on the queue and `read` on the exchange;
//! - publishing needs `write` on the exchange (the default exchange is `amq.default`, and
//!   allows publishing to any queue by name: retries, the outcome log and control replies go
//!   through it);
//! - consuming and `basic.get` need `read` on the queue.
//!
//! A dead-letter exchange and its queue share a name, and the patterns cannot tell an exchange
//! from a queue: the stages that bind `{prefix}.dead` may also read it.

use super::Role;

/// One user's `configure`, `write` and `read` patterns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permissions {
    /// Names it may declare (and delete).
    pub configure: String,
    /// Exchanges it may publish to, queues it may bind.
    pub write: String,
    /// Queues it may consume, exchanges it may bind from.
    pub read: String,
}

impl Permissions {
    /// A user that may declare, publish and read nothing: enough to read a queue's depth with a
    /// passive declaration (KEDA's `rabbitmq` scaler over AMQP).
    pub fn depth_only() -> Self {
        Self {
            configure: "^$".into(),
            write: "^$".into(),
            read: "^$".into(),
        }
    }

    /// What `role` needs under `prefix`.
    pub fn of(role: Role, prefix: &str) -> Self {
        let p = escape(prefix);
        let retry = r"\.retry\.\d+s";
        match role {
            // With the server-named reply queue of `jst2kd backfill`, which runs as the
            // producer (an exclusive queue: no other connection can use it).
            Role::Producer => Self {
                configure: format!(
                    r"^({p}(\.counts|\.events|\.control|\.producer\.lock)?|amq\.gen-.+)$"
                ),
                write: format!(r"^({p}|{p}\.counts|{p}\.dead|amq\.default)$"),
                read: format!(r"^({p}|{p}\.counts|{p}\.control|amq\.gen-.+)$"),
            },
            Role::Transformer => Self {
                configure: format!(r"^{p}(\.counts({retry})?|\.bills|\.dead|\.events)?$"),
                write: format!(r"^({p}|{p}\.counts|{p}\.bills|{p}\.dead|amq\.default)$"),
                read: format!(r"^({p}|{p}\.counts({retry})?|{p}\.bills|{p}\.dead)$"),
            },
            Role::Loader => Self {
                configure: format!(r"^{p}(\.bills({retry})?|\.dead|\.events)?$"),
                write: format!(r"^({p}|{p}\.bills|{p}\.dead|amq\.default)$"),
                read: format!(r"^({p}|{p}\.bills({retry})?|{p}\.dead)$"),
            },
            // Everything under the prefix, and the server-named reply queue of `backfill`.
            Role::Operator => Self {
                configure: format!(r"^({p}(\..+)?|amq\.gen-.+)$"),
                write: format!(r"^({p}(\..+)?|amq\.default)$"),
                read: format!(r"^({p}(\..+)?|amq\.gen-.+)$"),
            },
        }
    }
}

/// The users of one pipeline: `jst2kd-producer`, `jst2kd-transformer`, `jst2kd-loader`,
/// `jst2kd-keda` (queue depths only) and `jst2kd-ops` (the operations commands), with what
/// each needs under `prefix`.
pub fn users(prefix: &str) -> Vec<(String, Permissions)> {
    let mut users: Vec<(String, Permissions)> = Role::WORKERS
        .iter()
        .map(|role| {
            (
                format!("jst2kd-{}", role.name()),
                Permissions::of(*role, prefix),
            )
        })
        .collect();
    users.push(("jst2kd-keda".into(), Permissions::depth_only()));
    users.push(("jst2kd-ops".into(), Permissions::of(Role::Operator, prefix)));
    users
}

/// `s` with every character a regular expression gives a meaning escaped.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_prefix_gives_the_patterns_the_deployment_files_ship() {
        let loader = Permissions::of(Role::Loader, "jst2kd");
        assert_eq!(
            loader.configure,
            r"^jst2kd(\.bills(\.retry\.\d+s)?|\.dead|\.events)?$"
        );
        assert_eq!(
            loader.write,
            r"^(jst2kd|jst2kd\.bills|jst2kd\.dead|amq\.default)$"
        );
        assert_eq!(
            loader.read,
            r"^(jst2kd|jst2kd\.bills(\.retry\.\d+s)?|jst2kd\.dead)$"
        );
        let names: Vec<String> = users("jst2kd").into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "jst2kd-producer",
                "jst2kd-transformer",
                "jst2kd-loader",
                "jst2kd-keda",
                "jst2kd-ops"
            ]
        );
    }

    #[test]
    fn a_prefix_is_escaped_so_that_it_matches_only_itself() {
        let producer = Permissions::of(Role::Producer, "shop-1.eu");
        assert_eq!(
            producer.configure,
            r"^(shop-1\.eu(\.counts|\.events|\.control|\.producer\.lock)?|amq\.gen-.+)$"
        );
        assert_eq!(escape(r"a+b(c)$"), r"a\+b\(c\)\$");
    }
}
