"""POST spelt as an argument of .request / .stream."""
import httpx
import requests


def charge(msg):
    requests.request("POST", "https://provider/v1/charges", json=msg)  # flagged
    httpx.request(method="post", url="https://provider/v1/charges", json=msg)  # flagged
    s = requests.Session()
    s.request("POST", "https://provider/v1/charges", json=msg, headers={"Accept": "application/json"})  # flagged
    with httpx.Client() as c:
        with c.stream("POST", "https://provider/v1/charges", json=msg) as response:  # flagged
            response.read()
        c.request("GET", "https://provider/v1/charges")
