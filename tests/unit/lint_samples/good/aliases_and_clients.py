"""Aliases, sessions and clients, each POST with the key."""
import httpx
import requests as r
from httpx import AsyncClient
from httpx import post as send


def charge(msg):
    key = f"charge-{msg['msg_id']}"
    r.post("https://provider/v1/charges", json=msg, headers={"Idempotency-Key": key})
    send("https://provider/v1/charges", json=msg, headers={"Idempotency-Key": key})
    s = r.Session()
    s.post("https://provider/v1/charges", json=msg, headers={"Idempotency-Key": key})
    with httpx.Client() as c:
        c.post("https://provider/v1/charges", json=msg, headers={"Idempotency-Key": key})
        c.request("POST", "https://provider/v1/charges", json=msg, headers={"Idempotency-Key": key})


async def charge_async(msg):
    async with AsyncClient() as ac:
        await ac.post("https://provider/v1/charges", json=msg, headers={"Idempotency-Key": msg["msg_id"]})


class Consumer:
    def __init__(self):
        self.client = httpx.Client()

    def charge(self, msg):
        return self.client.post("https://provider/v1/charges", json=msg, headers={"Idempotency-Key": msg["msg_id"]})
