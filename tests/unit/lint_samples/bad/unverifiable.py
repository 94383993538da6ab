"""Headers the rule cannot see into: reported as unverifiable, not passed.

The first one is the rule's documented blind spot: the helper does set the key.
"""
import requests


def idempotent_headers(msg):
    return {"Idempotency-Key": f"charge-{msg['msg_id']}"}


def via_helper(msg):
    requests.post("https://provider/v1/charges", json=msg, headers=idempotent_headers(msg))  # flagged


def via_parameter(msg, headers):
    requests.post("https://provider/v1/charges", json=msg, headers=headers)  # flagged


def via_kwargs(msg, **options):
    requests.post("https://provider/v1/charges", json=msg, **options)  # flagged
