"""Headers built in a variable that never gets the key, or loses it."""
import requests

BASE = {"Content-Type": "application/json"}


def literal_without_key(msg):
    headers = {"Authorization": "Bearer sk_test"}
    headers["Content-Type"] = "application/json"
    requests.post("https://provider/v1/charges", json=msg, headers=headers)  # flagged


def dict_call_without_key(msg):
    headers = dict(BASE, accept="json")
    requests.post("https://provider/v1/charges", json=msg, headers=headers)  # flagged


def key_removed(msg):
    headers = {"Idempotency-Key": msg["msg_id"]}
    del headers["Idempotency-Key"]
    requests.post("https://provider/v1/charges", json=msg, headers=headers)  # flagged


def key_popped_for_the_retry(msg):
    headers = {"Idempotency-Key": msg["msg_id"]}
    headers.pop("Idempotency-Key")
    requests.post("https://provider/v1/charges", json=msg, headers=headers)  # flagged


def key_added_too_late(msg):
    headers = dict(BASE)
    requests.post("https://provider/v1/charges", json=msg, headers=headers)  # flagged
    headers["Idempotency-Key"] = msg["msg_id"]


def rebound_without_key(msg):
    headers = {"Idempotency-Key": msg["msg_id"]}
    headers = BASE.copy()
    requests.post("https://provider/v1/charges", json=msg, headers=headers)  # flagged


def module_level(msg):
    requests.post("https://provider/v1/charges", json=msg, headers=BASE)  # flagged
