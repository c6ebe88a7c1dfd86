"""Kingdee's official Python SDK (kingdee-cdp-webapi-sdk 8.2.0), unchanged, against
`jst2kd sim kingdee`: a client none of us wrote keeps the simulator honest.

Usage: python kingdee_sdk_conformance.py http://127.0.0.1:PORT/k3cloud
The simulator runs with its default credentials (those of config/local.toml).
"""
import json
import sys

from k3cloud_webapi_sdk.main import K3CloudApiSdk

ACCT, USER = "local-acct", "local-user"
APP_ID, APP_SECRET = "123456_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcY", "0123456789abcdef0123456789abcdef"


def sdk(url, secret=APP_SECRET):
    api = K3CloudApiSdk(url)
    api.InitConfig(ACCT, USER, APP_ID, secret, url, lcid=2052)
    return api


def bill(number, qty):
    org = {"FNumber": "100"}
    return {
        "FBillNo": number, "FBillTypeID": {"FNUMBER": "QTCKD01_SYS"}, "FStockOrgId": org, "FPickOrgId": org,
        "FStockDirect": "GENERAL", "FDate": "2026-03-01", "FOwnerTypeIdHead": "BD_OwnerOrg", "FOwnerIdHead": org,
        "FEntity": [{"FMaterialId": {"FNumber": "SKU-1"}, "FUnitID": {"FNumber": "Pcs"}, "FBaseUnitId": {"FNumber": "Pcs"},
                     "FQty": qty, "FStockId": {"FNumber": "CK001"}, "FStockStatusId": {"FNumber": "KCZT01_SYS"},
                     "FOwnerTypeId": "BD_OwnerOrg", "FOwnerId": org, "FKeeperTypeId": "BD_KeeperOrg", "FKeeperId": org}],
    }


def main(url):
    results = []

    def check(name, ok, detail=""):
        results.append(ok)
        print(("PASS " if ok else "FAIL ") + name + ("" if ok else " — " + detail))

    api = sdk(url)
    data = {"NeedReturnFields": ["FBillNo", "FID"], "IsVerifyBaseDataField": True, "Model": [bill("SDK1", 2.0), bill("SDK2", 3.0)]}
    saved = json.loads(api.BatchSave("STK_MisDelivery", data))
    status = saved["Result"]["ResponseStatus"]
    check("BatchSave saves both bills", status["IsSuccess"] is True and len(status["SuccessEntitys"]) == 2, json.dumps(saved))

    again = json.loads(api.BatchSave("STK_MisDelivery", {"Model": [bill("SDK1", 2.0)]}))
    errors = again["Result"]["ResponseStatus"]["Errors"]
    check("a used bill number is refused", any("已经被使用" in e["Message"] for e in errors), json.dumps(again))

    rows = json.loads(api.ExecuteBillQuery({"FormId": "STK_MisDelivery", "FieldKeys": "FBillNo,FQty", "FilterString": "FBillNo='SDK2'"}))
    check("ExecuteBillQuery finds the bill", rows == [["SDK2", 3.0]], json.dumps(rows))

    wrong = json.loads(sdk(url, "f" * 32).BatchSave("STK_MisDelivery", {"Model": [bill("SDK3", 1.0)]}))
    wrong_status = wrong["Result"]["ResponseStatus"]
    check("a wrong secret is refused", wrong_status["IsSuccess"] is False and not wrong_status["SuccessEntitys"], json.dumps(wrong))
    rows = json.loads(api.ExecuteBillQuery({"FormId": "STK_MisDelivery", "FieldKeys": "FBillNo", "FilterString": "FBillNo='SDK3'"}))
    check("nothing was saved with the wrong secret", rows == [], json.dumps(rows))

    passed = sum(results)
    print(f"kingdee-sdk: {passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
