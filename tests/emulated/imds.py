"""A fake EC2 instance metadata service that insists on IMDSv2, as nodes are configured to.

It serves what the project reads (region, private address, spot notices) and what the AWS CLI
reads to sign requests with the instance role (role credentials). Every GET must carry a token
from a PUT; reads are recorded with whether they did.
"""

from __future__ import annotations

import datetime
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeMetadata(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        local_ipv4: str,
        *,
        address: tuple[str, int] = ("127.0.0.1", 0),
        region: str = "eu-central-1",
        role: str = "dask-node",
        instance_id: str = "i-0123456789abcdef0",
    ) -> None:
        super().__init__(address, _Handler)
        self.local_ipv4 = local_ipv4
        self.region = region
        self.role = role
        self.instance_id = instance_id
        self.notice: dict | None = None
        self.tokens: set[str] = set()
        self.reads: list[tuple[str, bool]] = []  # (path, carried a valid token)
        # Made-up role credentials: moto accepts any, and tests check they never leak.
        self.credentials = {
            "Code": "Success",
            "Type": "AWS-HMAC",
            "AccessKeyId": "ASIA" + secrets.token_hex(8).upper(),
            "SecretAccessKey": secrets.token_urlsafe(30),
            "Token": secrets.token_urlsafe(60),
            "LastUpdated": _iso(datetime.datetime.now(datetime.UTC)),
            "Expiration": _iso(datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=6)),
        }
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def values(self) -> dict[str, str]:
        values = {
            "placement/region": self.region,
            "local-ipv4": self.local_ipv4,
            "instance-id": self.instance_id,
            "iam/security-credentials/": self.role,
            f"iam/security-credentials/{self.role}": json.dumps(self.credentials),
        }
        if self.notice:
            values["spot/instance-action"] = json.dumps(self.notice)
        return values


def _iso(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class _Handler(BaseHTTPRequestHandler):
    server: FakeMetadata

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass

    def _reply(self, status: int, body: str = "") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def do_PUT(self) -> None:
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            token = secrets.token_urlsafe(24)
            self.server.tokens.add(token)
            self._reply(200, token)
        else:
            self._reply(400)

    def do_GET(self) -> None:
        authorized = self.headers.get("X-aws-ec2-metadata-token") in self.server.tokens
        self.server.reads.append((self.path, authorized))
        if not authorized:
            return self._reply(401)
        value = self.server.values().get(self.path.removeprefix("/latest/meta-data/"))
        if value is None:
            return self._reply(404)
        return self._reply(200, value)
