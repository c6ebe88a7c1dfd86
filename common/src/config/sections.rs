//! The sections of the configuration file, with their defaults (SPEC section 5). Each binary
//! checks the sections it uses with [`super::Config::validate`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Dur, Secret, lenient, parse_duration};
use crate::time::parse_beijing;

/// The whole configuration of every binary.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// RabbitMQ connection and topology.
    pub amqp: AmqpConfig,
    /// The `/metrics`, `/healthz`, `/readyz` endpoint.
    pub metrics: MetricsConfig,
    /// Logging and shutdown.
    pub runtime: RuntimeConfig,
    /// The Jushuitan open platform.
    pub jst: JstConfig,
    /// The producer's polling.
    pub producer: ProducerConfig,
    /// The Kingdee Cloud Galaxy WebAPI.
    pub kingdee: KingdeeConfig,
    /// How a count document becomes Kingdee bills.
    pub mapping: MappingConfig,
    /// The loader's batching.
    pub loader: LoaderConfig,
}

/// `[amqp]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// Broker URL (`amqp://` or `amqps://`); a secret, since it carries a password.
    pub url: Secret,
    /// File holding the URL (instead of `url`).
    pub url_file: Option<PathBuf>,
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
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10"),
            url_file: None,
            prefix: "jst2kd".into(),
            prefetch: 100,
            delivery_limit: 20,
            retry_delays: vec![Dur::secs(5), Dur::secs(30), Dur::secs(120), Dur::secs(600)],
            max_message_bytes: 16 * 1024 * 1024,
        }
    }
}

/// `[metrics]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Listen address; each binary has its own default port.
    pub listen: Option<String>,
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (for log collectors).
    #[default]
    Json,
    /// Human-readable lines.
    Pretty,
}

/// `[runtime]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// How long a graceful shutdown may take.
    pub shutdown_timeout: Dur,
    /// `json` or `pretty`.
    pub log_format: LogFormat,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            shutdown_timeout: Dur::secs(30),
            log_format: LogFormat::Json,
        }
    }
}

/// `[jst]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JstConfig {
    /// Open platform host, no path.
    pub base_url: String,
    /// The app's key.
    pub app_key: Secret,
    /// File holding `app_key`.
    pub app_key_file: Option<PathBuf>,
    /// The app's secret (signs every call).
    pub app_secret: Secret,
    /// File holding `app_secret`.
    pub app_secret_file: Option<PathBuf>,
    /// The merchant's access token.
    pub access_token: Secret,
    /// File holding `access_token`.
    pub access_token_file: Option<PathBuf>,
    /// The merchant's refresh token.
    pub refresh_token: Secret,
    /// File holding `refresh_token`.
    pub refresh_token_file: Option<PathBuf>,
    /// Documents per page, at most 50.
    #[serde(deserialize_with = "lenient::number")]
    pub page_size: u32,
    /// Most calls in any sliding second (0: no pacing).
    #[serde(deserialize_with = "lenient::number")]
    pub rate_per_second: u32,
    /// Most calls in any sliding minute (0: no pacing).
    #[serde(deserialize_with = "lenient::number")]
    pub rate_per_minute: u32,
    /// Timeout of one HTTP call.
    pub timeout: Dur,
}

impl Default for JstConfig {
    fn default() -> Self {
        Self {
            base_url: "https://openapi.jushuitan.com".into(),
            app_key: Secret::default(),
            app_key_file: None,
            app_secret: Secret::default(),
            app_secret_file: None,
            access_token: Secret::default(),
            access_token_file: None,
            refresh_token: Secret::default(),
            refresh_token_file: None,
            page_size: 50,
            rate_per_second: 5,
            rate_per_minute: 100,
            timeout: Dur::secs(30),
        }
    }
}

/// When the first poll starts: a Beijing time, or a duration before the first start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// A fixed instant.
    At(chrono::DateTime<chrono::FixedOffset>),
    /// That long before the producer first starts.
    Ago(Duration),
}

impl<'de> Deserialize<'de> for StartAt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if let Some(at) = parse_beijing(&text) {
            return Ok(StartAt::At(at));
        }
        parse_duration(&text).map(StartAt::Ago).map_err(|_| {
            serde::de::Error::custom(
                "must be a time (yyyy-MM-dd HH:mm:ss, Beijing) or a duration such as \"24h\"",
            )
        })
    }
}

/// `[producer]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducerConfig {
    /// Time between two polls.
    pub poll_interval: Dur,
    /// Where the very first poll starts.
    pub start_at: StartAt,
    /// How far before the checkpoint each poll starts again (documents modified while paging).
    pub overlap: Dur,
    /// How far behind "now" each poll ends (JST's own indexing delay).
    pub lag: Dur,
    /// Statuses fetched, one query each.
    #[serde(deserialize_with = "lenient::list")]
    pub statuses: Vec<String>,
    /// Checkpoint file.
    pub checkpoint: PathBuf,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            poll_interval: Dur::secs(60),
            start_at: StartAt::Ago(Duration::from_secs(86400)),
            overlap: Dur::secs(300),
            lag: Dur::secs(30),
            statuses: default_statuses(),
            checkpoint: PathBuf::from("./producer.checkpoint.json"),
        }
    }
}

fn default_statuses() -> Vec<String> {
    vec!["Confirmed".into(), "Archive".into()]
}

/// How the client authenticates to Kingdee.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KingdeeAuth {
    /// Signed headers on every call, as the official SDKs do.
    #[default]
    Signature,
    /// A session opened with `AuthService.LoginBySign` (app id and secret).
    LoginBySign,
    /// A session opened with `AuthService.ValidateUser` (user and password).
    Password,
}

/// `[kingdee]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KingdeeConfig {
    /// Site URL, e.g. `https://acme.ik3cloud.com/k3cloud`.
    pub base_url: String,
    /// Authentication method.
    pub auth: KingdeeAuth,
    /// Data centre (account set) id.
    pub acct_id: Secret,
    /// File holding `acct_id`.
    pub acct_id_file: Option<PathBuf>,
    /// Integration user.
    pub user_name: Secret,
    /// File holding `user_name`.
    pub user_name_file: Option<PathBuf>,
    /// Third-party app id (`123456_…`).
    pub app_id: Secret,
    /// File holding `app_id`.
    pub app_id_file: Option<PathBuf>,
    /// Third-party app secret.
    pub app_secret: Secret,
    /// File holding `app_secret`.
    pub app_secret_file: Option<PathBuf>,
    /// The user's password (`auth = "password"`).
    pub password: Secret,
    /// File holding `password`.
    pub password_file: Option<PathBuf>,
    /// Language id.
    #[serde(deserialize_with = "lenient::number")]
    pub lcid: u32,
    /// Organisation number sent in the app data.
    pub org_num: String,
    /// Timeout of one HTTP call.
    pub timeout: Dur,
    /// Let stock go negative: BatchSave sends `STK_InvCheckResult`.
    #[serde(deserialize_with = "lenient::boolean")]
    pub allow_negative_stock: bool,
    /// What follows a save: `none`, `submit`, or `audit` (submit, then audit; stock moves).
    pub after_save: AfterSave,
}

/// The operation after a bill is saved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterSave {
    /// Leave the bill created (status A).
    #[default]
    None,
    /// Submit it (status B).
    Submit,
    /// Submit and audit it (status C): the stock moves.
    Audit,
}

impl Default for KingdeeConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            auth: KingdeeAuth::Signature,
            acct_id: Secret::default(),
            acct_id_file: None,
            user_name: Secret::default(),
            user_name_file: None,
            app_id: Secret::default(),
            app_id_file: None,
            app_secret: Secret::default(),
            app_secret_file: None,
            password: Secret::default(),
            password_file: None,
            lcid: 2052,
            org_num: "0".into(),
            timeout: Dur::secs(60),
            allow_negative_stock: false,
            after_save: AfterSave::None,
        }
    }
}

/// Which sign marks a loss in a line's `qty`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossSign {
    /// JST's own convention: negative difference = loss.
    #[default]
    Negative,
    /// Accounts whose data is signed the other way.
    Positive,
}

/// What count gains (positive differences) become.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gains {
    /// Nothing: only losses leave the books.
    #[default]
    Ignore,
    /// One other-inbound bill (`STK_MISCELLANEOUS`) per document.
    MiscIn,
}

/// `[mapping]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MappingConfig {
    /// Statuses that are mapped; other documents are skipped.
    #[serde(deserialize_with = "lenient::list")]
    pub statuses: Vec<String>,
    /// Sign of a loss in `qty`.
    pub loss_sign: LossSign,
    /// `FBillNo` of the loss bill; `{io_id}` is replaced.
    pub bill_no_template: String,
    /// `FBillTypeID` of the loss bill.
    pub bill_type: String,
    /// What gains become: `ignore` or `misc_in`.
    pub gains: Gains,
    /// `FBillNo` of the gain bill; `{io_id}` is replaced.
    pub gain_bill_no_template: String,
    /// `FBillTypeID` of the gain bill.
    pub gain_bill_type: String,
    /// Stock, pick and owner organisation number (required).
    pub org: String,
    /// Department number, when the account wants one.
    pub dept: Option<String>,
    /// Unit number of every entry.
    pub unit: String,
    /// `"{wms_co_id}:{wh_id}"` or `"{wh_id}"` → Kingdee stock number (required).
    pub warehouses: BTreeMap<String, String>,
    /// JST `sku_id` → Kingdee material number, where they differ.
    pub skus: BTreeMap<String, String>,
    /// An SKU absent from `skus` is a mapping error instead of passing through.
    #[serde(deserialize_with = "lenient::boolean")]
    pub require_sku_mapping: bool,
    /// Most entries in one bill: a document with more becomes several bills, numbered
    /// `{bill_no}-2`, `{bill_no}-3` … after the first (which keeps the plain number).
    #[serde(deserialize_with = "lenient::number")]
    pub max_entries: usize,
}

impl Default for MappingConfig {
    fn default() -> Self {
        Self {
            statuses: default_statuses(),
            loss_sign: LossSign::Negative,
            bill_no_template: "JSTPD{io_id}".into(),
            bill_type: "QTCKD01_SYS".into(),
            gains: Gains::Ignore,
            gain_bill_no_template: "JSTPY{io_id}".into(),
            gain_bill_type: "QTRKD01_SYS".into(),
            org: String::new(),
            dept: None,
            unit: "Pcs".into(),
            warehouses: BTreeMap::new(),
            skus: BTreeMap::new(),
            require_sku_mapping: false,
            max_entries: 1000,
        }
    }
}

/// `[loader]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoaderConfig {
    /// Bills per BatchSave call.
    #[serde(deserialize_with = "lenient::number")]
    pub batch_size: usize,
    /// How long an incomplete batch waits for more bills.
    pub linger: Dur,
    /// BatchSave calls in flight at once.
    #[serde(deserialize_with = "lenient::number")]
    pub concurrency: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 50,
            linger: Dur::millis(200),
            concurrency: 2,
        }
    }
}
