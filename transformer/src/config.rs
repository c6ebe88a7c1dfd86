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

/// Where a JST warehouse is booked in Kingdee: `"CK001"`, or
/// `{ stock = "CK101", org = "200", location = "A-01", dept = "BM02" }`. A missing `org` or
/// `dept` falls back to `mapping.org` / `mapping.dept`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Warehouse {
    /// The stock number (`FStockId`).
    pub stock: String,
    /// The organisation that books the whole bill (stock, pick, owner, keeper).
    pub org: Option<String>,
    /// The stock location (`FStockLocId`), for a stock that manages locations.
    pub location: Option<String>,
    /// The department of the bill (`FDeptId`).
    pub dept: Option<String>,
}

impl Warehouse {
    /// A stock of `mapping.org`, without location.
    pub fn stock(number: impl Into<String>) -> Self {
        Self {
            stock: number.into(),
            ..Self::default()
        }
    }
}

const WAREHOUSE_KEYS: &[&str] = &["stock", "org", "location", "dept"];

impl<'de> Deserialize<'de> for Warehouse {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Warehouse;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a stock number, or a table with stock, org, location, dept")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Warehouse, E> {
                Ok(Warehouse::stock(v.trim()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Warehouse, A::Error> {
                let mut w = Warehouse::default();
                let mut given: Vec<String> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value: String = map.next_value()?;
                    let value = value.trim().to_string();
                    // Environment keys may arrive in capitals (`…__WAREHOUSES__2__STOCK`);
                    // the same key twice (`stock` in the file, `STOCK` in the environment)
                    // would leave it to chance which wins.
                    let lower = key.to_ascii_lowercase();
                    if given.contains(&lower) {
                        return Err(serde::de::Error::custom(format!(
                            "sets `{lower}` twice (in the file and in the environment? write the environment's key in lower case: …__{lower}=)"
                        )));
                    }
                    given.push(lower.clone());
                    let slot = match lower.as_str() {
                        "stock" => {
                            w.stock = value;
                            continue;
                        }
                        "org" => &mut w.org,
                        "location" => &mut w.location,
                        "dept" => &mut w.dept,
                        _ => {
                            return Err(serde::de::Error::unknown_field(&key, WAREHOUSE_KEYS));
                        }
                    };
                    *slot = Some(value).filter(|v| !v.is_empty());
                }
                Ok(w)
            }
        }
        d.deserialize_any(Visit)
    }
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
    /// Unit number of an entry whose material is not in `units`.
    pub unit: String,
    /// Kingdee material number → its unit number (`FUnitID`, and `FBaseUnitId` on losses).
    pub units: BTreeMap<String, String>,
    /// The account's stock-location flex dimension (e.g. `FF100001`), when a warehouse
    /// names a `location`.
    pub location_field: Option<String>,
    /// `"{wms_co_id}:{wh_id}"` or `"{wh_id}"` → a Kingdee stock (required): its number, or a
    /// table with the organisation, location and department that book it.
    pub warehouses: BTreeMap<String, Warehouse>,
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
            units: BTreeMap::new(),
            location_field: None,
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
        let field = self.location_field.as_deref().unwrap_or("").trim();
        for (key, w) in &self.warehouses {
            let at = format!("mapping.warehouses.\"{key}\"");
            if w.stock.is_empty() {
                return Err(ConfigError::key(&at, "needs a stock number"));
            }
            if w.location.is_some() && field.is_empty() {
                return Err(ConfigError::key(
                    &format!("{at}.location"),
                    "needs mapping.location_field: the account's stock-location flex dimension, such as FF100001",
                ));
            }
        }
        if !field.is_empty() && !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ConfigError::key(
                "mapping.location_field",
                "must be a field key such as FF100001",
            ));
        }
        if let Some((material, _)) = self.units.iter().find(|(_, u)| u.trim().is_empty()) {
            return Err(ConfigError::key(
                &format!("mapping.units.\"{material}\""),
                "needs a unit number",
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

    #[test]
    fn a_warehouse_is_a_stock_number_or_a_table() {
        let layers = common::config::Layers::load_from_str(
            r#"[mapping]
org = "100"
location_field = "FF100001"
[mapping.units]
"MAT-0002" = "Box"
[mapping.warehouses]
"1" = "CK001"
"10001:1" = { stock = "CK101", org = "200" }
"2" = { stock = "CK002", location = "A-01", dept = "BM02" }
"#,
            [
                ("JST2KD_MAPPING__WAREHOUSES__3__STOCK", "CK003"),
                ("JST2KD_MAPPING__WAREHOUSES__3__ORG", "300"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .expect("loads");
        let m: MappingConfig = layers.section().expect("valid");
        assert_eq!(m.warehouses["1"], Warehouse::stock("CK001"));
        assert_eq!(m.warehouses["10001:1"].org.as_deref(), Some("200"));
        assert_eq!(m.warehouses["2"].location.as_deref(), Some("A-01"));
        assert_eq!(m.warehouses["2"].dept.as_deref(), Some("BM02"));
        assert_eq!(m.warehouses["3"].stock, "CK003", "from the environment");
        assert_eq!(m.warehouses["3"].org.as_deref(), Some("300"));
        assert_eq!(m.units["MAT-0002"], "Box");
    }

    #[test]
    fn a_warehouse_table_names_what_is_wrong_with_it() {
        let load = |text: &str| {
            common::config::Layers::load_from_str(text, Vec::new())
                .and_then(|l| l.section::<MappingConfig>())
        };
        let e = load("[mapping]\norg = \"1\"\n[mapping.warehouses]\n\"2\" = { stock = \"CK2\", shelf = \"A\" }\n")
            .expect_err("unknown key");
        assert!(e.to_string().contains("shelf"), "{e}");
        let e = load("[mapping]\norg = \"1\"\n[mapping.warehouses]\n\"2\" = { stock = \"CK2\", location = \"A\" }\n")
            .expect_err("no location_field");
        assert!(e.to_string().contains("mapping.location_field"), "{e}");
        assert!(e.to_string().contains("\"2\""), "{e}");
        let e = load("[mapping]\norg = \"1\"\n[mapping.warehouses]\n\"2\" = { org = \"200\" }\n")
            .expect_err("no stock");
        assert!(e.to_string().contains("stock"), "{e}");
        let e = load("[mapping]\norg = \"1\"\nlocation_field = \"FF 1\"\n[mapping.warehouses]\n\"1\" = \"CK1\"\n")
            .expect_err("bad field");
        assert!(e.to_string().contains("mapping.location_field"), "{e}");
        // The file's `stock` and the environment's `STOCK`: which wins would be chance.
        let e = common::config::Layers::load_from_str(
            "[mapping]\norg = \"1\"\n[mapping.warehouses]\n\"2\" = { stock = \"CK2\" }\n",
            [(
                "JST2KD_MAPPING__WAREHOUSES__2__STOCK".to_string(),
                "CK3".to_string(),
            )],
        )
        .and_then(|l| l.section::<MappingConfig>())
        .expect_err("twice");
        assert!(e.to_string().contains("twice"), "{e}");
        let m = common::config::Layers::load_from_str(
            "[mapping]\norg = \"1\"\n[mapping.warehouses]\n\"2\" = { stock = \"CK2\" }\n",
            [(
                "JST2KD_MAPPING__WAREHOUSES__2__stock".to_string(),
                "CK3".to_string(),
            )],
        )
        .and_then(|l| l.section::<MappingConfig>())
        .expect("lower case replaces");
        assert_eq!(m.warehouses["2"].stock, "CK3");
    }
}
