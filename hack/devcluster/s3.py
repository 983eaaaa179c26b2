"""A real S3-compatible store for the local cluster: moto's server (PyPI `moto[server]`) as a host process.

Owns: starting and stopping the server, its one user and bucket, and the env file's keys
`S3_ENDPOINT` (as this machine reaches it), `S3_ENDPOINT_IN_CLUSTER` (as pods reach it),
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` and `S3_BUCKET` (a bucket that exists).
The server enforces authentication (`INITIAL_NO_AUTH_ACTION_COUNT`): the first `SETUP_ACTIONS`
requests create an IAM user allowed `s3:*`, its access key and the bucket; every later request must
carry a valid SigV4 signature of that key (a wrong secret gets 403 SignatureDoesNotMatch).

Where it listens: the node address (198.18.0.1), which pods reach and this machine also has, so
one address serves both (127.0.0.1 by default, for tests that start it directly). Called by
devcluster.realnode and by tests directly.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from devcluster import procs

BUCKET = "modeldeploy"
REGION = "us-east-1"
USER = "modeldeploy"
SETUP_ACTIONS = 4  # CreateUser, PutUserPolicy, CreateAccessKey, CreateBucket
POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


def moto_server() -> Path:
    return Path(sys.executable).with_name("moto_server")


class S3Store(procs.HttpReadyProcess):
    """moto's server on `host`, with a user, its key and a bucket once `start` returns."""

    def __init__(self, state: Path, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = procs.free_port(host)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(SETUP_ACTIONS)
        state.joinpath("logs").mkdir(parents=True, exist_ok=True)
        super().__init__("s3", moto_server(), state / "logs" / "s3.log", env, state / "s3")
        self.access_key = ""
        self.secret_key = ""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ready_url(self) -> str:
        return f"{self.url}/moto-api/"  # moto's own page: not an S3 action, so not counted

    def argv(self) -> list[str]:
        return [str(self.binary), "-H", self.host, "-p", str(self.port)]

    def start(self, timeout: float = 60.0) -> None:
        if not self.binary.exists():
            raise RuntimeError(f"{self.binary} is missing: install the dev extras (moto[server])")
        super().start(timeout)
        self._setup()

    def _client(self, service: str, key: str = "setup", secret: str = "setup") -> Any:
        import boto3  # moto's own dependency

        return boto3.client(
            service, endpoint_url=self.url, region_name=REGION, aws_access_key_id=key, aws_secret_access_key=secret
        )

    def _setup(self) -> None:
        iam = self._client("iam")
        iam.create_user(UserName=USER)
        iam.put_user_policy(UserName=USER, PolicyName="s3", PolicyDocument=json.dumps(POLICY))
        key = iam.create_access_key(UserName=USER)["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        self.client().create_bucket(Bucket=BUCKET)

    def client(self) -> Any:
        """A boto3 S3 client with the store's key (every request signed and checked)."""
        return self._client("s3", self.access_key, self.secret_key)

    def env_keys(self) -> dict[str, str]:
        """The env file's S3 keys."""
        return {
            "S3_ENDPOINT": self.url,
            "S3_ENDPOINT_IN_CLUSTER": self.url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": REGION,
            "S3_BUCKET": BUCKET,
        }
