//! The forms the simulator knows (其他出库单, 其他入库单): their fields, and the validation of
//! one bill against them and the master data, as a real account does it.

use serde_json::Value;

use super::*;

pub(super) const MIS_DELIVERY: &str = "STK_MisDelivery";
pub(super) const MISCELLANEOUS: &str = "STK_MISCELLANEOUS";

/// What the simulator knows of a form: its fields, which are references, what is required.
pub(super) struct FormSpec {
    pub(super) header_fields: &'static [&'static str],
    pub(super) header_references: &'static [&'static str],
    pub(super) header_required: &'static [&'static str],
    pub(super) entry_fields: &'static [&'static str],
    pub(super) entry_references: &'static [&'static str],
    pub(super) bill_types: &'static [&'static str],
    /// Outbound (takes stock) or inbound.
    pub(super) outbound: bool,
}

/// 其他出库单.
pub(super) const MIS_DELIVERY_SPEC: FormSpec = FormSpec {
    header_fields: &[
        "FID",
        "FBillNo",
        "FBillTypeID",
        "FStockOrgId",
        "FPickOrgId",
        "FStockDirect",
        "FDate",
        "FDeptId",
        "FCustId",
        "FBizType",
        "FOwnerTypeIdHead",
        "FOwnerIdHead",
        "FNote",
        "FBaseCurrId",
        "FEntity",
    ],
    header_references: &[
        "FBillTypeID",
        "FStockOrgId",
        "FPickOrgId",
        "FDeptId",
        "FCustId",
        "FOwnerIdHead",
        "FBaseCurrId",
    ],
    header_required: &[
        "FBillTypeID",
        "FStockOrgId",
        "FPickOrgId",
        "FDate",
        "FOwnerIdHead",
    ],
    entry_fields: &[
        "FEntryID",
        "FMaterialId",
        "FUnitID",
        "FBaseUnitId",
        "FQty",
        "FStockId",
        "FStockLocId",
        "FStockStatusId",
        "FLot",
        "FProduceDate",
        "FExpiryDate",
        "FOwnerTypeId",
        "FOwnerId",
        "FKeeperTypeId",
        "FKeeperId",
        "FEntryNote",
    ],
    entry_references: &[
        "FMaterialId",
        "FUnitID",
        "FBaseUnitId",
        "FStockId",
        "FStockStatusId",
        "FLot",
        "FOwnerId",
        "FKeeperId",
    ],
    bill_types: &["QTCKD01_SYS", "QTCKD02_SYS", "QTCKD03_SYS"],
    outbound: true,
};

/// 其他入库单: no pick organisation, no base unit (it follows from the material).
pub(super) const MISCELLANEOUS_SPEC: FormSpec = FormSpec {
    header_fields: &[
        "FID",
        "FBillNo",
        "FBillTypeID",
        "FStockOrgId",
        "FStockDirect",
        "FDate",
        "FDeptId",
        "FSupplierId",
        "FOwnerTypeIdHead",
        "FOwnerIdHead",
        "FNote",
        "FBaseCurrId",
        "FEntity",
    ],
    header_references: &[
        "FBillTypeID",
        "FStockOrgId",
        "FDeptId",
        "FSupplierId",
        "FOwnerIdHead",
        "FBaseCurrId",
    ],
    header_required: &["FBillTypeID", "FStockOrgId", "FDate", "FOwnerIdHead"],
    entry_fields: &[
        "FEntryID",
        "FInStockType",
        "FMaterialId",
        "FUnitID",
        "FQty",
        "FStockId",
        "FStockLocId",
        "FStockStatusId",
        "FLot",
        "FProduceDate",
        "FExpiryDate",
        "FOwnerTypeId",
        "FOwnerId",
        "FKeeperTypeId",
        "FKeeperId",
        "FEntryNote",
    ],
    entry_references: &[
        "FMaterialId",
        "FUnitID",
        "FStockId",
        "FStockStatusId",
        "FLot",
        "FOwnerId",
        "FKeeperId",
    ],
    bill_types: &["QTRKD01_SYS", "QTRKD02_SYS"],
    outbound: false,
};

pub(super) fn form_spec(form_id: &str) -> Option<&'static FormSpec> {
    if form_id.eq_ignore_ascii_case(MIS_DELIVERY) {
        Some(&MIS_DELIVERY_SPEC)
    } else if form_id.eq_ignore_ascii_case(MISCELLANEOUS) {
        Some(&MISCELLANEOUS_SPEC)
    } else {
        None
    }
}

pub(super) struct Problem {
    pub(super) msg_code: i64,
    pub(super) field: Option<String>,
    pub(super) message: String,
}

impl Problem {
    pub(super) fn new(msg_code: i64, field: Option<&str>, message: String) -> Self {
        Self {
            msg_code,
            field: field.map(str::to_string),
            message,
        }
    }
}

/// The number inside a reference object, or a problem when the value is not one.
pub(super) fn reference<'a>(
    value: &'a Value,
    key: &str,
    row: Option<usize>,
) -> Result<&'a str, Problem> {
    let number = value.as_object().and_then(|o| {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("FNumber"))
            .and_then(|(_, v)| v.as_str())
    });
    number.ok_or_else(|| {
        let place = row.map_or(String::new(), |r| {
            format!("单据体实体【明细信息】第【{r}】行分录，")
        });
        Problem::new(
            9,
            Some(key),
            format!(
                "{place}字段“{key}”的值格式不正确：基础资料字段应为对象，例如 {{\"FNumber\":\"…\"}}"
            ),
        )
    })
}

pub(super) fn find<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

/// Every problem of one bill (empty when it can be saved).
pub(super) fn validate(
    spec: &FormSpec,
    model: &Value,
    master: Option<&MasterData>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let Some(obj) = model.as_object() else {
        return vec![Problem::new(8, None, "Model 必须是对象".into())];
    };
    for key in obj.keys() {
        if !spec
            .header_fields
            .iter()
            .any(|f| f.eq_ignore_ascii_case(key))
        {
            problems.push(Problem::new(
                9,
                Some(key),
                format!("元数据中标识为{key}的字段不存在"),
            ));
        }
    }
    for key in spec.header_references {
        if let Some(v) = find(obj, key)
            && let Err(p) = reference(v, key, None)
        {
            problems.push(p);
        }
    }
    for key in spec.header_required {
        if find(obj, key).is_none() {
            problems.push(Problem::new(11, Some(key), format!("字段“{key}”是必填项")));
        }
    }
    if let Some(t) = find(obj, "FBillTypeID").and_then(|v| reference(v, "FBillTypeID", None).ok())
        && !spec.bill_types.contains(&t)
    {
        problems.push(Problem::new(
            11,
            Some("FBillTypeID"),
            format!("单据类型“{t}”不存在"),
        ));
    }
    if let Some(date) = find(obj, "FDate").and_then(Value::as_str)
        && common::time::parse_beijing(date).is_none()
    {
        problems.push(Problem::new(
            11,
            Some("FDate"),
            "字段“日期”的值不是有效日期".into(),
        ));
    }
    // Base data is looked up in the organisation that books the bill.
    let org = find(obj, "FStockOrgId").and_then(|v| reference(v, "FStockOrgId", None).ok());
    if let Some(master) = master {
        for key in spec
            .header_references
            .iter()
            .filter(|k| ["FStockOrgId", "FPickOrgId", "FOwnerIdHead"].contains(k))
        {
            if let Some(n) = find(obj, key).and_then(|v| reference(v, key, None).ok())
                && !master.orgs.iter().any(|o| o == n)
            {
                problems.push(unknown(key, n, None));
            }
        }
        if let Some(n) = find(obj, "FDeptId").and_then(|v| reference(v, "FDeptId", None).ok())
            && !master.has_department(n, org)
        {
            problems.push(unknown("FDeptId", n, None));
        }
        if master.require_dept_or_cust
            && find(obj, "FDeptId").is_none()
            && find(obj, "FCustId").is_none()
        {
            problems.push(Problem::new(
                11,
                Some("FDeptId"),
                "字段“领料部门”和“客户”不能同时为空".into(),
            ));
        }
    }
    let entries = match find(obj, "FEntity") {
        Some(Value::Array(e)) if !e.is_empty() => e,
        _ => {
            problems.push(Problem::new(
                11,
                Some("FEntity"),
                "单据体“明细信息”至少要有一行分录".into(),
            ));
            return problems;
        }
    };
    for (i, entry) in entries.iter().enumerate() {
        let row = i + 1;
        let Some(e) = entry.as_object() else {
            problems.push(Problem::new(
                8,
                Some("FEntity"),
                format!("第【{row}】行分录不是对象"),
            ));
            continue;
        };
        for key in e.keys() {
            if !spec
                .entry_fields
                .iter()
                .any(|f| f.eq_ignore_ascii_case(key))
            {
                problems.push(Problem::new(
                    9,
                    Some(key),
                    format!("元数据中标识为{key}的字段不存在"),
                ));
            }
        }
        for key in spec.entry_references {
            if let Some(v) = find(e, key)
                && let Err(p) = reference(v, key, Some(row))
            {
                problems.push(p);
            }
        }
        for key in ["FMaterialId", "FUnitID", "FQty", "FStockId"] {
            if find(e, key).is_none() {
                problems.push(Problem::new(
                    11,
                    Some(key),
                    format!("单据体实体【明细信息】第【{row}】行分录，【{key}】字段必录"),
                ));
            }
        }
        if let Some(q) = find(e, "FQty")
            && common::messages::num_field(Some(q)).is_none_or(|q| q <= 0.0)
        {
            problems.push(Problem::new(
                11,
                Some("FQty"),
                format!("单据体实体【明细信息】第【{row}】行分录，实发数量必须大于0"),
            ));
        }
        let Some(master) = master else { continue };
        let material =
            find(e, "FMaterialId").and_then(|v| reference(v, "FMaterialId", Some(row)).ok());
        if let Some(m) = material {
            match master.material(m, org) {
                None => problems.push(unknown("FMaterialId", m, Some(row))),
                Some(known) => {
                    if known.lot && find(e, "FLot").is_none() {
                        problems.push(Problem::new(
                            11,
                            Some("FLot"),
                            format!("单据体实体【明细信息】第【{row}】行分录，物料【{m}】启用了批号管理，【批号】字段必录"),
                        ));
                    }
                    if let Some(u) =
                        find(e, "FUnitID").and_then(|v| reference(v, "FUnitID", Some(row)).ok())
                        && u != known.unit
                    {
                        problems.push(unknown("FUnitID", u, Some(row)));
                    }
                }
            }
        }
        if let Some(s) = find(e, "FStockId").and_then(|v| reference(v, "FStockId", Some(row)).ok())
        {
            // A stock of another organisation is not found in this one, as in Kingdee.
            match master.stock(s, org) {
                None => problems.push(unknown("FStockId", s, Some(row))),
                Some(stock) => problems.extend(location(e, stock, row, master)),
            }
        }
    }
    problems
}

/// The stock location of an entry in a stock that manages locations: required, and one of
/// the stock's. `FStockLocId` is a flex field: `{"FSTOCKLOCID__<dimension>": {"FNumber": …}}`.
/// (The "required" text follows the shape of Kingdee's lot-management message; we found no
/// published example of the location one.)
fn location(
    e: &serde_json::Map<String, Value>,
    stock: &Stock,
    row: usize,
    master: &MasterData,
) -> Option<Problem> {
    if stock.locations.is_empty() {
        return None;
    }
    let flex = find(e, "FStockLocId").and_then(Value::as_object);
    if let (Some(flex), Some(field)) = (flex, &master.location_field) {
        let want = format!("FSTOCKLOCID__{field}");
        if let Some(other) = flex.keys().find(|k| !k.eq_ignore_ascii_case(&want)) {
            // The account has no such dimension.
            return Some(Problem::new(
                9,
                Some("FStockLocId"),
                format!("元数据中标识为{other}的字段不存在"),
            ));
        }
    }
    let given = match flex.and_then(|flex| {
        flex.iter()
            .find(|(k, _)| k.to_ascii_uppercase().starts_with("FSTOCKLOCID__"))
    }) {
        None => None,
        Some((k, v)) => match reference(v, k, Some(row)) {
            Ok(number) => Some(number),
            Err(p) => return Some(p),
        },
    };
    match given {
        None => Some(Problem::new(
            11,
            Some("FStockLocId"),
            format!(
                "单据体实体【明细信息】第【{row}】行分录，仓库【{}】启用了仓位管理，【仓位】字段必录",
                stock.number
            ),
        )),
        Some(l) if !stock.locations.iter().any(|x| x == l) => {
            Some(unknown("FStockLocId", l, Some(row)))
        }
        Some(_) => None,
    }
}

pub(super) fn unknown(key: &str, number: &str, row: Option<usize>) -> Problem {
    let place = row.map_or(String::new(), |r| {
        format!("单据体实体【明细信息】第【{r}】行分录，")
    });
    Problem::new(
        11,
        Some(key),
        format!("{place}字段“{key}”的值“{number}”在系统中不存在或未审核"),
    )
}
