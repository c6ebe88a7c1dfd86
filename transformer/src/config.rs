//! `[mapping]`, and everything the transformer reads: `[amqp]` and `[mapping]`.

use std::collections::BTreeMap;

use common::config::{ConfigError, FromLayers, Layers, Section, lenient};
use common::queue::AmqpConfig;
use serde::Deserialize;

/// The transformer's whole configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The broker.
    pub amqp: AmqpConfig,
    /// How documents become bills.
    pub mapping: MappingConfig,
}

impl FromLayers for Config {
    fn from_layers(layers: &Layers) -> Result<Self, ConfigError> {
        Ok(Self {
            amqp: layers.section()?,
            mapping: layers.section()?,
        })
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
            statuses: vec!["Confirmed".into(), "Archive".into()],
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

impl Section for MappingConfig {
    const NAME: &'static str = "mapping";

    fn check(&self) -> Result<(), ConfigError> {
        if self.org.trim().is_empty() {
            return Err(ConfigError::key(
                "mapping.org",
                "is required: the Kingdee organisation number",
            ));
        }
        if self.warehouses.is_empty() {
            return Err(ConfigError::key(
                "mapping.warehouses",
                "is required: map each JST warehouse to a Kingdee stock number",
            ));
        }
        for (template, key) in [
            (&self.bill_no_template, "mapping.bill_no_template"),
            (&self.gain_bill_no_template, "mapping.gain_bill_no_template"),
        ] {
            if !template.contains("{io_id}") {
                return Err(ConfigError::key(key, "must contain {io_id}"));
            }
        }
        if self.gains == Gains::MiscIn
            && self.bill_no_template.replace("{io_id}", "")
                == self.gain_bill_no_template.replace("{io_id}", "")
        {
            return Err(ConfigError::key(
                "mapping.gain_bill_no_template",
                "must differ from mapping.bill_no_template (two bills of one document need two numbers)",
            ));
        }
        if !(1..=10_000).contains(&self.max_entries) {
            return Err(ConfigError::key(
                "mapping.max_entries",
                "must be 1 to 10000",
            ));
        }
        if self.statuses.is_empty() {
            return Err(ConfigError::key(
                "mapping.statuses",
                "must name at least one status",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::config::shape;
    use common::config::testing::env;

    fn mapping(pairs: &[(&str, &str)]) -> Result<MappingConfig, ConfigError> {
        env(pairs).and_then(|l| l.section())
    }

    const MINIMAL: [(&str, &str); 2] = [
        ("JST2KD_MAPPING__ORG", "100"),
        ("JST2KD_MAPPING__WAREHOUSES__1", "CK001"),
    ];

    #[test]
    fn the_type_has_the_registered_keys() {
        shape::registered::<MappingConfig>("mapping").expect("matches");
    }

    #[test]
    fn org_and_warehouses_are_required_and_the_rest_defaults() {
        let e = mapping(&[]).expect_err("no org");
        assert!(e.to_string().contains("mapping.org"), "{e}");
        let e = mapping(&MINIMAL[..1]).expect_err("no warehouses");
        assert!(e.to_string().contains("mapping.warehouses"), "{e}");
        let m = mapping(&MINIMAL).expect("minimal");
        assert_eq!(m.bill_no_template, "JSTPD{io_id}");
        assert_eq!(m.max_entries, 1000);
        assert_eq!(m.statuses, vec!["Confirmed", "Archive"]);
    }

    #[test]
    fn bill_numbers_stay_apart() {
        for (var, value, key) in [
            (
                "JST2KD_MAPPING__BILL_NO_TEMPLATE",
                "JSTPD",
                "mapping.bill_no_template",
            ),
            ("JST2KD_MAPPING__MAX_ENTRIES", "0", "mapping.max_entries"),
            ("JST2KD_MAPPING__STATUSES", "", "mapping.statuses"),
            ("JST2KD_MAPPING__GAINS", "keep", "mapping.gains"),
        ] {
            let mut pairs = MINIMAL.to_vec();
            pairs.push((var, value));
            let e = mapping(&pairs).expect_err(&format!("{var}={value}"));
            assert!(e.to_string().contains(key), "{var}={value}: {e}");
        }
        let mut pairs = MINIMAL.to_vec();
        pairs.extend([
            ("JST2KD_MAPPING__GAINS", "misc_in"),
            ("JST2KD_MAPPING__GAIN_BILL_NO_TEMPLATE", "JSTPD{io_id}"),
        ]);
        let e = mapping(&pairs).expect_err("same numbers");
        assert!(e.to_string().contains("gain_bill_no_template"), "{e}");
    }
}
