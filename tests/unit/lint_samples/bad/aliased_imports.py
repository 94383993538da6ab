"""The libraries under other names."""
import requests as r
from httpx import post as send
from requests import request as call


def charge(msg):
    r.post("https://provider/v1/charges", json=msg)  # flagged
    send("https://provider/v1/charges", json=msg, headers={"Authorization": "Bearer sk_test"})  # flagged
    call("POST", "https://provider/v1/charges", json=msg)  # flagged
