"""Module-level functions of requests and httpx, with no key."""
import httpx
import requests


def charge(msg):
    requests.post("https://provider/v1/charges", json=msg)  # flagged
    requests.post("https://provider/v1/charges", json=msg, headers={"Content-Type": "application/json"})  # flagged
    httpx.post("https://provider/v1/charges", json=msg, headers=None)  # flagged
    requests.get("https://provider/v1/charges")  # a GET is not the rule's business
