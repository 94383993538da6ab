"""Every POST carries the key in a literal, in any capitalisation."""
import httpx
import requests


def charge(msg):
    key = f"charge-{msg['msg_id']}"
    requests.post("https://provider/v1/charges", json=msg, headers={"Idempotency-Key": key})
    httpx.post("https://provider/v1/charges", json=msg, headers={"idempotency-key": key, "X-Trace": "1"})
    requests.request("POST", "https://provider/v1/charges", json=msg, headers={"IDEMPOTENCY-KEY": key})
    requests.get("https://provider/v1/charges")  # no key needed on a GET
