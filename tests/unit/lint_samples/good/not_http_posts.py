"""Things named post that are not HTTP POSTs to the rule."""
import requests


class Mailbox:
    def post(self, message):
        return message


def post(message):
    return message


def handle(msg, queue):
    Mailbox().post(msg)
    post(msg)
    queue.post(msg)
    requests.get("https://provider/v1/charges/ch_1")
    s = requests.Session()
    s.get("https://provider/v1/charges/ch_1")
    s.request("GET", "https://provider/v1/charges/ch_1")
