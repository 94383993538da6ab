"""Headers built in variables, each way the rule follows."""
import requests

BASE = {"Content-Type": "application/json"}
IDEMPOTENT = {"Idempotency-Key": "fixed-for-this-module", "Content-Type": "application/json"}


def literal(msg):
    headers = {"Idempotency-Key": msg["msg_id"], "Content-Type": "application/json"}
    requests.post("https://provider/v1/charges", json=msg, headers=headers)


def subscript_added(msg):
    headers = {"Content-Type": "application/json"}
    headers["Idempotency-Key"] = msg["msg_id"]
    requests.post("https://provider/v1/charges", json=msg, headers=headers)


def updated(msg):
    headers = dict(BASE)
    headers.update({"Idempotency-Key": msg["msg_id"]})
    requests.post("https://provider/v1/charges", json=msg, headers=headers)


def set_default(msg):
    headers = BASE.copy()
    headers.setdefault("Idempotency-Key", msg["msg_id"])
    requests.post("https://provider/v1/charges", json=msg, headers=headers)


def dict_calls(msg):
    pairs = dict([("Idempotency-Key", msg["msg_id"])])
    requests.post("https://provider/v1/charges", json=msg, headers=pairs)
    merged = dict(BASE, **{"Idempotency-Key": msg["msg_id"]})
    requests.post("https://provider/v1/charges", json=msg, headers=merged)


def spread_and_union(msg):
    spread = {**BASE, "Idempotency-Key": msg["msg_id"]}
    requests.post("https://provider/v1/charges", json=msg, headers=spread)
    union = BASE | {"Idempotency-Key": msg["msg_id"]}
    requests.post("https://provider/v1/charges", json=msg, headers=union)
    grown = dict(BASE)
    grown |= {"Idempotency-Key": msg["msg_id"]}
    requests.post("https://provider/v1/charges", json=msg, headers=grown)


def copied(msg):
    first = {"Idempotency-Key": msg["msg_id"]}
    second = first
    requests.post("https://provider/v1/charges", json=msg, headers=second)


def module_level(msg):
    requests.post("https://provider/v1/charges", json=msg, headers=IDEMPOTENT)
