//! The account's master data (`--master-data FILE`): organisations, stocks (with the
//! organisation that uses them and their stock locations), materials (unit, lot management),
//! departments, the stock parameter that allows negative stock, and the stock on hand. Bills
//! are validated against it, and ExecuteBillQuery answers it on the base-data forms
//! (`ORG_Organizations`, `BD_STOCK`, `BD_MATERIAL`, `BD_Department`) with the field keys a
//! preflight asks for.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

/// `--master-data FILE`. A plain string in `stocks` or `departments` is usable by every
/// organisation (a stock without locations).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterData {
    /// Organisation numbers.
    #[serde(default)]
    pub orgs: Vec<String>,
    /// Stocks.
    #[serde(default)]
    pub stocks: Vec<Stock>,
    /// Materials.
    #[serde(default)]
    pub materials: Vec<Material>,
    /// Departments.
    #[serde(default)]
    pub departments: Vec<Department>,
    /// The account requires a department or a customer on every bill.
    #[serde(default)]
    pub require_dept_or_cust: bool,
    /// The stock parameter: negative stock may be allowed (with `STK_InvCheckResult`) or is
    /// forbidden outright, whatever the call says.
    #[serde(default = "yes")]
    pub allow_negative: bool,
    /// Stock on hand by `"{stock}:{material}"`; an outbound audit beyond it (when listed)
    /// meets the negative-stock check.
    #[serde(default)]
    pub on_hand: BTreeMap<String, f64>,
    /// The account's stock-location flex dimension (`FF100001`): `FStockLocId` keyed by any
    /// other is refused. Unset: any `FSTOCKLOCID__…` key is read.
    #[serde(default)]
    pub location_field: Option<String>,
}

fn yes() -> bool {
    true
}

impl Default for MasterData {
    fn default() -> Self {
        Self {
            orgs: Vec::new(),
            stocks: Vec::new(),
            materials: Vec::new(),
            departments: Vec::new(),
            require_dept_or_cust: false,
            allow_negative: true,
            on_hand: BTreeMap::new(),
            location_field: None,
        }
    }
}

/// A stock: `"CK009"` or `{"number": "CK002", "org": "100", "locations": ["A-01"]}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stock {
    /// Stock number.
    pub number: String,
    /// The organisation that uses it; `None`: every organisation.
    pub org: Option<String>,
    /// Its stock locations; empty: the stock does not manage locations.
    pub locations: Vec<String>,
}

/// A department: `"BM01"` or `{"number": "BM02", "org": "100"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Department {
    /// Department number.
    pub number: String,
    /// The organisation it belongs to; `None`: every organisation.
    pub org: Option<String>,
}

/// A material of the master data.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Material {
    /// Material number.
    pub number: String,
    /// Its (base) unit number.
    #[serde(default = "default_unit")]
    pub unit: String,
    /// Lot-managed.
    #[serde(default)]
    pub lot: bool,
    /// The organisation that uses it; `None`: every organisation.
    #[serde(default)]
    pub org: Option<String>,
}

fn default_unit() -> String {
    "Pcs".into()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw<T> {
    Number(String),
    Table(T),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StockTable {
    number: String,
    #[serde(default)]
    org: Option<String>,
    #[serde(default)]
    locations: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DepartmentTable {
    number: String,
    #[serde(default)]
    org: Option<String>,
}

impl<'de> Deserialize<'de> for Stock {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Raw::<StockTable>::deserialize(d)? {
            Raw::Number(number) => Stock {
                number,
                ..Stock::default()
            },
            Raw::Table(t) => Stock {
                number: t.number,
                org: t.org,
                locations: t.locations,
            },
        })
    }
}

impl<'de> Deserialize<'de> for Department {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Raw::<DepartmentTable>::deserialize(d)? {
            Raw::Number(number) => Department { number, org: None },
            Raw::Table(t) => Department {
                number: t.number,
                org: t.org,
            },
        })
    }
}

/// Whether base data used by `owner` (`None`: every organisation) serves organisation `org`.
fn serves(owner: Option<&String>, org: Option<&str>) -> bool {
    match (owner, org) {
        (None, _) | (_, None) => true,
        (Some(o), Some(org)) => o == org,
    }
}

impl MasterData {
    /// The stock `number` as organisation `org` sees it (`None` when it does not exist there).
    pub fn stock(&self, number: &str, org: Option<&str>) -> Option<&Stock> {
        self.stocks
            .iter()
            .find(|s| s.number == number && serves(s.org.as_ref(), org))
    }

    /// The material `number` as organisation `org` sees it.
    pub fn material(&self, number: &str, org: Option<&str>) -> Option<&Material> {
        self.materials
            .iter()
            .find(|m| m.number == number && serves(m.org.as_ref(), org))
    }

    /// Whether department `number` exists for organisation `org`.
    pub fn has_department(&self, number: &str, org: Option<&str>) -> bool {
        self.departments
            .iter()
            .any(|d| d.number == number && serves(d.org.as_ref(), org))
    }

    /// The organisations a record used by `owner` is allocated to, one query row each (a
    /// record for every organisation shows once per organisation, as allocated base data
    /// does in Kingdee).
    fn use_orgs(&self, owner: Option<&String>) -> Vec<Option<String>> {
        match owner {
            Some(o) => vec![Some(o.clone())],
            None if self.orgs.is_empty() => vec![None],
            None => self.orgs.iter().cloned().map(Some).collect(),
        }
    }

    /// ExecuteBillQuery on a base-data form: `None` when `form` is not one; otherwise the
    /// rows (or the error of an unknown field key). Every record here is audited
    /// (`FDocumentStatus` C) and enabled (`FForbidStatus` A).
    pub fn query(&self, form: &str, keys: &[&str], numbers: Option<&[String]>) -> Option<Value> {
        let wanted = |n: &str| numbers.is_none_or(|list| list.iter().any(|x| x == n));
        // Each record as (number, use organisation, its other fields by lower-case key).
        let mut records: Vec<(String, Option<String>, BTreeMap<&str, Value>)> = Vec::new();
        let known: &[&str] = match form.to_ascii_lowercase().as_str() {
            "org_organizations" => {
                for o in &self.orgs {
                    records.push((o.clone(), None, BTreeMap::new()));
                }
                &[
                    "fnumber",
                    "forgid",
                    "fname",
                    "fdocumentstatus",
                    "fforbidstatus",
                ]
            }
            "bd_stock" => {
                for s in &self.stocks {
                    for org in self.use_orgs(s.org.as_ref()) {
                        let fields =
                            BTreeMap::from([("fisopenlocation", json!(!s.locations.is_empty()))]);
                        records.push((s.number.clone(), org, fields));
                    }
                }
                &[
                    "fnumber",
                    "fuseorgid.fnumber",
                    "fisopenlocation",
                    "fname",
                    "fstockid",
                    "fdocumentstatus",
                    "fforbidstatus",
                ]
            }
            "bd_material" => {
                for m in &self.materials {
                    for org in self.use_orgs(m.org.as_ref()) {
                        let fields = BTreeMap::from([
                            ("fbaseunitid.fnumber", json!(m.unit)),
                            ("fisbatchmanage", json!(m.lot)),
                        ]);
                        records.push((m.number.clone(), org, fields));
                    }
                }
                &[
                    "fnumber",
                    "fuseorgid.fnumber",
                    "fbaseunitid.fnumber",
                    "fisbatchmanage",
                    "fname",
                    "fmaterialid",
                    "fdocumentstatus",
                    "fforbidstatus",
                ]
            }
            "bd_department" => {
                for d in &self.departments {
                    for org in self.use_orgs(d.org.as_ref()) {
                        records.push((d.number.clone(), org, BTreeMap::new()));
                    }
                }
                &[
                    "fnumber",
                    "fuseorgid.fnumber",
                    "fname",
                    "fdeptid",
                    "fdocumentstatus",
                    "fforbidstatus",
                ]
            }
            _ => return None,
        };
        for key in keys {
            if !known.contains(&key.to_ascii_lowercase().as_str()) {
                return Some(json!([[super::status_error(
                    9,
                    &format!("元数据中标识为{key}的字段不存在")
                )]]));
            }
        }
        let rows = records
            .into_iter()
            .filter(|(number, _, _)| wanted(number))
            .map(|(number, org, fields)| {
                let row: Vec<Value> = keys
                    .iter()
                    .map(|k| match k.to_ascii_lowercase().as_str() {
                        "fnumber" | "fname" => json!(number),
                        "fuseorgid.fnumber" => json!(org),
                        "forgid" | "fstockid" | "fmaterialid" | "fdeptid" => json!(0),
                        "fdocumentstatus" => json!("C"),
                        "fforbidstatus" => json!("A"),
                        other => fields.get(other).cloned().unwrap_or(Value::Null),
                    })
                    .collect();
                Value::Array(row)
            })
            .collect();
        Some(Value::Array(rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master() -> MasterData {
        serde_json::from_value(json!({
            "orgs": ["100", "200"],
            "stocks": ["CK009", {"number": "CK002", "org": "100", "locations": ["A-01", "A-02"]}],
            "materials": [{"number": "SKU-0003", "unit": "Box", "lot": false}],
            "departments": ["BM01", {"number": "BM02", "org": "100"}],
            "allow_negative": false,
            "on_hand": {"CK001:SKU-0001": 5}
        }))
        .expect("the issue's example parses")
    }

    #[test]
    fn stocks_and_departments_belong_to_their_organisation() {
        let m = master();
        assert!(m.stock("CK009", Some("200")).is_some(), "plain: every org");
        assert!(m.stock("CK002", Some("100")).is_some());
        assert!(m.stock("CK002", Some("200")).is_none());
        assert_eq!(m.stock("CK002", None).map(|s| s.locations.len()), Some(2));
        assert!(m.has_department("BM02", Some("100")));
        assert!(!m.has_department("BM02", Some("200")));
        assert!(!m.allow_negative);
        let old: MasterData =
            serde_json::from_value(json!({"stocks": ["CK001"]})).expect("today's form");
        assert!(
            old.allow_negative,
            "allowed with the flag unless the account forbids it"
        );
        assert!(
            serde_json::from_value::<MasterData>(json!({"stocks": [{"number": "X", "shelf": 1}]}))
                .is_err()
        );
    }

    #[test]
    fn base_data_is_queried_with_the_preflight_field_keys() {
        let m = master();
        let rows = m
            .query(
                "BD_STOCK",
                &["FNumber", "FUseOrgId.FNumber", "FIsOpenLocation"],
                None,
            )
            .expect("a base-data form");
        assert_eq!(
            rows,
            json!([
                ["CK009", "100", false],
                ["CK009", "200", false],
                ["CK002", "100", true]
            ])
        );
        let rows = m
            .query(
                "BD_MATERIAL",
                &["FNumber", "FBaseUnitId.FNumber", "FIsBatchManage"],
                Some(&["SKU-0003".to_string(), "NOPE".to_string()]),
            )
            .expect("a base-data form");
        assert_eq!(
            rows,
            json!([["SKU-0003", "Box", false], ["SKU-0003", "Box", false]])
        );
        let rows = m
            .query("ORG_Organizations", &["FNumber"], None)
            .expect("orgs");
        assert_eq!(rows, json!([["100"], ["200"]]));
        let bad = m
            .query("BD_Department", &["FNope"], None)
            .expect("answered");
        assert!(bad.to_string().contains("FNope"));
        assert!(m.query("STK_MisDelivery", &["FNumber"], None).is_none());
    }
}
