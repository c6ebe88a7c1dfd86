//! `[amqp]`: the broker connection and the topology every worker declares alike.

use serde::Deserialize;

use crate::config::{ConfigError, Dur, Secret, Section, lenient};

/// `[amqp]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// Broker URL (`amqp://` or `amqps://`); a secret, since it carries a password.
    pub url: Secret,
    /// Prefix of every exchange and queue name.
    pub prefix: String,
    /// Unacknowledged deliveries per consumer.
    #[serde(deserialize_with = "lenient::number")]
    pub prefetch: u16,
    /// `x-delivery-limit` of the work queues: a safety net against crash loops.
    #[serde(deserialize_with = "lenient::number")]
    pub delivery_limit: u32,
    /// One retry tier per delay.
    #[serde(deserialize_with = "lenient::list")]
    pub retry_delays: Vec<Dur>,
    /// Largest message body a worker reads, in bytes; a larger one is dead-lettered
    /// `too_large` without being parsed.
    #[serde(deserialize_with = "lenient::number")]
    pub max_message_bytes: u64,
    /// How long the outcome log (`{prefix}.events`) keeps events (`x-max-age`).
    pub events_max_age: Dur,
    /// How many bytes the outcome log keeps at most (`x-max-length-bytes`).
    #[serde(deserialize_with = "lenient::number")]
    pub events_max_bytes: u64,
    /// `amqps://`: a PEM file of certificate authorities to trust besides the system's (the
    /// broker's own CA).
    pub ca_file: Option<std::path::PathBuf>,
    /// `amqps://`: the client certificate (PEM, with its chain) for a broker that asks for one.
    pub cert_file: Option<std::path::PathBuf>,
    /// `amqps://`: the client certificate's private key (PEM; a secret: keep the file
    /// readable by the worker only).
    pub key_file: Option<std::path::PathBuf>,
}

/// The built-in `amqp.url`.
const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10";

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: Secret::new(DEFAULT_URL),
            prefix: "jst2kd".into(),
            prefetch: 100,
            delivery_limit: 20,
            retry_delays: vec![Dur::secs(5), Dur::secs(30), Dur::secs(120), Dur::secs(600)],
            max_message_bytes: 16 * 1024 * 1024,
            events_max_age: Dur::secs(30 * 86_400),
            events_max_bytes: 1_000_000_000,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

impl AmqpConfig {
    /// The TLS files: given only with `amqps://` nodes, certificate and key together, each
    /// readable (read again at every connection, so a renewed certificate is picked up).
    fn check_tls(&self, nodes: &[&str]) -> Result<(), ConfigError> {
        let any = self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some();
        if any && nodes.iter().any(|u| !u.starts_with("amqps://")) {
            return Err(ConfigError::key(
                "amqp.ca_file",
                "and amqp.cert_file / amqp.key_file are for amqps:// URLs (TLS); amqp.url has an amqp:// one",
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(ConfigError::key(
                "amqp.cert_file",
                "and amqp.key_file go together (the client certificate and its key)",
            ));
        }
        for (key, path) in [
            ("amqp.ca_file", &self.ca_file),
            ("amqp.cert_file", &self.cert_file),
        ] {
            if let Some(path) = path {
                crate::http::ca_certificates(key, path).map_err(ConfigError)?;
            }
        }
        if let Some(path) = &self.key_file {
            std::fs::read(path).map_err(|e| {
                ConfigError(format!(
                    "`amqp.key_file`: cannot read {}: {}",
                    path.display(),
                    e.kind()
                ))
            })?;
        }
        Ok(())
    }
}

impl Section for AmqpConfig {
    const NAME: &'static str = "amqp";
    const SECRET_DEFAULTS: &'static [(&'static str, &'static str)] = &[("url", DEFAULT_URL)];

    fn check(&self) -> Result<(), ConfigError> {
        let nodes = super::rabbit::nodes(self.url.expose());
        if nodes.is_empty() {
            return Err(ConfigError::key(
                "amqp.url",
                "is empty (amqp://user:password@host:port/vhost, or several such URLs of one cluster separated by commas)",
            ));
        }
        for (i, url) in nodes.iter().enumerate() {
            // The URL itself is never quoted (it holds the password): its position is.
            let which = if nodes.len() == 1 {
                String::new()
            } else {
                format!(" (URL {} of {})", i + 1, nodes.len())
            };
            if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                return Err(ConfigError::key(
                    "amqp.url",
                    format!("must start with amqp:// or amqps://{which}"),
                ));
            }
            // Outside the credentials a comma can only start the next node's URL.
            let after_credentials = url.rsplit_once('@').map_or(*url, |(_, rest)| rest);
            if after_credentials.contains(',') {
                return Err(ConfigError::key(
                    "amqp.url",
                    format!(
                        "has a comma that does not start a full URL{which}: list the nodes of a cluster as full URLs (amqp://user:password@host:port/vhost) separated by commas"
                    ),
                ));
            }
            if !super::rabbit::is_valid_url(url) {
                // Caught here, it is a configuration error (exit 2), not an endless "cannot
                // reach".
                return Err(ConfigError::key(
                    "amqp.url",
                    format!(
                        "is not a valid AMQP URL{which} (amqp://user:password@host:port/vhost?heartbeat=10; several nodes of one cluster: full URLs separated by commas)"
                    ),
                ));
            }
        }
        self.check_tls(&nodes)?;
        let prefix = &self.prefix;
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(ConfigError::key(
                "amqp.prefix",
                "must be non-empty letters, digits, '-', '_' or '.'",
            ));
        }
        if self.prefetch == 0 {
            return Err(ConfigError::key("amqp.prefetch", "must be at least 1"));
        }
        if !(64 * 1024..=128 * 1024 * 1024).contains(&self.max_message_bytes) {
            return Err(ConfigError::key(
                "amqp.max_message_bytes",
                "must be 65536 (64 KiB) to 134217728 (128 MiB, the broker's own limit)",
            ));
        }
        if self.events_max_age.0.as_secs() == 0 {
            return Err(ConfigError::key(
                "amqp.events_max_age",
                "must be at least one second",
            ));
        }
        if self.events_max_bytes < 1024 * 1024 {
            return Err(ConfigError::key(
                "amqp.events_max_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if self.delivery_limit == 0 {
            // 0 would dead-letter every message the first time it is requeued.
            return Err(ConfigError::key(
                "amqp.delivery_limit",
                "must be at least 1",
            ));
        }
        if self.retry_delays.is_empty() {
            return Err(ConfigError::key(
                "amqp.retry_delays",
                "must hold at least one delay (a transient failure needs a tier to wait in)",
            ));
        }
        if self.retry_delays.iter().any(|d| d.0.as_secs() == 0) {
            return Err(ConfigError::key(
                "amqp.retry_delays",
                "must hold delays of at least 1s",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::shape;
    use crate::config::testing::env;
    use crate::queue::Topology;

    fn amqp(pairs: &[(&str, &str)]) -> Result<AmqpConfig, ConfigError> {
        env(pairs).and_then(|l| l.section())
    }

    #[test]
    fn the_type_has_the_registered_keys() {
        shape::registered::<AmqpConfig>("amqp").expect("matches");
    }

    #[test]
    fn defaults_match_the_spec() {
        let a = amqp(&[]).expect("defaults");
        assert_eq!(a.prefix, "jst2kd");
        assert_eq!(a.prefetch, 100);
        assert_eq!(a.delivery_limit, 20);
        let delays: Vec<u64> = a.retry_delays.iter().map(|d| d.0.as_secs()).collect();
        assert_eq!(delays, vec![5, 30, 120, 600]);
        assert_eq!(
            a.url.expose(),
            "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10"
        );
    }

    #[test]
    fn the_url_comes_from_a_file_instead_of_the_default() {
        let file = crate::config::testing::TempFile::new("amqp://u:from-file@127.0.0.1:5672/%2f\n");
        let a = amqp(&[("JST2KD_AMQP__URL_FILE", file.0.to_str().expect("utf-8"))])
            .expect("a file replaces the default without conflict");
        assert_eq!(a.url.expose(), "amqp://u:from-file@127.0.0.1:5672/%2f");
        // The shipped files spell the default out; a file still replaces it.
        let path = file.0.to_str().expect("utf-8");
        let a = crate::config::Layers::load_from_str(
            &format!("[amqp]\nurl = \"{DEFAULT_URL}\"\n"),
            [("JST2KD_AMQP__URL_FILE".to_string(), path.to_string())],
        )
        .and_then(|l| l.section::<AmqpConfig>())
        .expect("the default and a file are not both given");
        assert_eq!(a.url.expose(), "amqp://u:from-file@127.0.0.1:5672/%2f");
        let e = amqp(&[
            ("JST2KD_AMQP__URL", "amqp://u:p@other:5672/%2f"),
            ("JST2KD_AMQP__URL_FILE", path),
        ])
        .expect_err("both");
        assert!(e.to_string().contains("not both"), "{e}");
    }

    #[test]
    fn several_nodes_of_one_cluster_are_full_urls_separated_by_commas() {
        let two = "amqp://u:p@rabbit-1:5672/%2f?heartbeat=10, amqps://u:p@rabbit-2:5671/%2f";
        let a = amqp(&[("JST2KD_AMQP__URL", two)]).expect("two nodes");
        let nodes = crate::queue::rabbit::nodes(a.url.expose());
        assert_eq!(nodes.len(), 2);
        let where_: Vec<String> = nodes
            .iter()
            .map(|u| crate::queue::rabbit::node_address(u))
            .collect();
        assert_eq!(where_, ["rabbit-1:5672", "rabbit-2:5671"]);
        // A bad second node is named by its position, never quoted (it holds a password).
        let e = amqp(&[(
            "JST2KD_AMQP__URL",
            "amqp://u:p@rabbit-1:5672/%2f,amqp://u:hunter2@rabbit-2:notaport/%2f",
        )])
        .expect_err("refused");
        let text = e.to_string();
        assert!(text.contains("URL 2 of 2"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let e = amqp(&[("JST2KD_AMQP__URL", "amqp://u:p@a/%2f,rabbit-2:5672")])
            .expect_err("a bare host is not a URL");
        assert!(e.to_string().contains("full URL"), "{e}");
        assert!(
            amqp(&[("JST2KD_AMQP__URL", " , ")]).is_err(),
            "no node at all"
        );
        // A comma inside one URL (a password) does not split it.
        let one = "amqp://u:pa,ss@rabbit-1:5672/%2f";
        let a = amqp(&[("JST2KD_AMQP__URL", one)]).expect("one node");
        assert_eq!(crate::queue::rabbit::nodes(a.url.expose()), [one]);
    }

    #[test]
    fn tls_files_go_with_amqps_and_certificate_with_key() {
        let pem = crate::config::testing::TempFile::new("not a certificate\n");
        let path = pem.0.to_str().expect("utf-8");
        let e = amqp(&[("JST2KD_AMQP__CA_FILE", path)]).expect_err("amqp:// with a CA");
        assert!(e.to_string().contains("amqps://"), "{e}");
        let tls = "amqps://u:p@rabbit:5671/%2f";
        let e = amqp(&[("JST2KD_AMQP__URL", tls), ("JST2KD_AMQP__KEY_FILE", path)])
            .expect_err("a key without its certificate");
        assert!(e.to_string().contains("go together"), "{e}");
        let e = amqp(&[("JST2KD_AMQP__URL", tls), ("JST2KD_AMQP__CA_FILE", path)])
            .expect_err("not PEM");
        assert!(e.to_string().contains("amqp.ca_file"), "{e}");
        let a = amqp(&[("JST2KD_AMQP__URL", tls)]).expect("amqps without files: system roots");
        assert_eq!(
            Topology::from_config(&a).tls,
            crate::queue::AmqpTls::default()
        );
    }

    #[test]
    fn an_unparseable_url_is_refused_without_repeating_it() {
        let e = amqp(&[("JST2KD_AMQP__URL", "amqp://u:hunter2@host:notaport/%2f")])
            .expect_err("refused");
        assert!(e.to_string().contains("amqp.url"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let a = amqp(&[("JST2KD_AMQP__URL", "amqp://u:hunter2@h:5672/%2f")]).expect("loads");
        assert!(!format!("{a:?}").contains("hunter2"));
    }

    #[test]
    fn values_that_would_break_a_worker_are_refused() {
        for (var, value, key) in [
            ("JST2KD_AMQP__DELIVERY_LIMIT", "0", "amqp.delivery_limit"),
            ("JST2KD_AMQP__RETRY_DELAYS", "[]", "amqp.retry_delays"),
            ("JST2KD_AMQP__RETRY_DELAYS", "0s", "amqp.retry_delays"),
            ("JST2KD_AMQP__PREFETCH", "0", "amqp.prefetch"),
            ("JST2KD_AMQP__PREFIX", "a b", "amqp.prefix"),
            (
                "JST2KD_AMQP__MAX_MESSAGE_BYTES",
                "10",
                "amqp.max_message_bytes",
            ),
        ] {
            let e = amqp(&[(var, value)]).expect_err(&format!("{var}={value} is refused"));
            assert!(e.to_string().contains(key), "{var}={value}: {e}");
        }
        let e = crate::config::Layers::load_from_str("[amqp]\nretry_delays = []\n", Vec::new())
            .and_then(|l| l.section::<AmqpConfig>())
            .expect_err("no tier");
        assert!(e.to_string().contains("amqp.retry_delays"), "{e}");
    }
}
