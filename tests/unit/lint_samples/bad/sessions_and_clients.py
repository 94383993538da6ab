"""Sessions and clients: assigned, in with blocks, async, on self, as annotated parameters."""
import httpx
import requests
from httpx import AsyncClient


def with_session(msg):
    s = requests.Session()
    s.post("https://provider/v1/charges", json=msg)  # flagged


def with_client(msg):
    with httpx.Client(timeout=5) as c:
        c.post("https://provider/v1/charges", json=msg, headers={"X-Trace": "1"})  # flagged


async def with_async_client(msg):
    async with AsyncClient() as ac:
        await ac.post("https://provider/v1/charges", json=msg)  # flagged


def inline(msg):
    requests.Session().post("https://provider/v1/charges", json=msg)  # flagged


class Consumer:
    def __init__(self):
        self.client = httpx.Client()

    def charge(self, msg):
        return self.client.post("https://provider/v1/charges", json=msg)  # flagged


def annotated(client: httpx.Client, msg):
    return client.post("https://provider/v1/charges", json=msg)  # flagged
