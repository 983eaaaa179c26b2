"""SigV4 against AWS's published example (S3 API reference, "Example: GET Object")."""

from __future__ import annotations

from datetime import UTC, datetime

from modeldeploy_server import sigv4
from modeldeploy_server.fetch import s3_request

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def test_aws_get_object_example() -> None:
    headers = {
        "Host": "examplebucket.s3.amazonaws.com",
        "Range": "bytes=0-9",
        "x-amz-content-sha256": sigv4.EMPTY_SHA256,
        "x-amz-date": "20130524T000000Z",
    }
    authorization = sigv4.sign(
        "GET", "/test.txt", {}, headers, payload_sha256=sigv4.EMPTY_SHA256,
        credentials=sigv4.Credentials("AKIAIOSFODNN7EXAMPLE", SECRET), region="us-east-1", service="s3",
        amz_date="20130524T000000Z",
    )  # fmt: skip
    assert authorization == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


def test_s3_request_is_path_style_and_signed_only_with_credentials() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    url, headers = s3_request("s3://models/porosity/7/model.joblib", "http://127.0.0.1:9000", {}, now)
    assert (url, headers) == ("http://127.0.0.1:9000/models/porosity/7/model.joblib", {})
    env = {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": "TOK", "AWS_REGION": "eu-x-1"}
    url, headers = s3_request("s3://models/a b.joblib", None, env | {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, now)
    assert url == "http://127.0.0.1:9/models/a%20b.joblib"
    assert headers["x-amz-date"] == "20260102T030405Z" and headers["x-amz-security-token"] == "TOK"
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AK/20260102/eu-x-1/s3/aws4_request, ")
    assert "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token," in headers["authorization"]
