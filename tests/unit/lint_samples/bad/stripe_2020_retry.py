"""The Stripe 2020 shape: the first attempt carries the key, the retry path drops it."""
import httpx


def charge(client: httpx.Client, msg):
    key = f"charge-{msg['msg_id']}"
    try:
        return client.post("https://provider/v1/charges", json=msg, headers={"Idempotency-Key": key})
    except httpx.TransportError:
        return client.post("https://provider/v1/charges", json=msg)  # flagged
