"""``QuerySigner`` (the API's presigned GETs, the send's probe among them) signs exactly as
botocore's ``S3SigV4QueryAuth`` does: the same URL, byte for byte, at the same instant, for
path-style and virtual-host URLs, default and explicit ports, IPv6, keys and parameters that
need encoding, and across a change of day (the signing key is kept per day)."""

from __future__ import annotations

from datetime import UTC, datetime
from unittest import mock

import pytest
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from chat_api.storage.objects import QuerySigner

KEY_ID, SECRET, REGION = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "eu-west-1"


def _botocore(url: str, expires: int, params: dict[str, str], now: datetime) -> str:
    request = AWSRequest(method="GET", url=url, params=params)
    with mock.patch("botocore.auth.get_current_datetime", return_value=now):
        S3SigV4QueryAuth(Credentials(KEY_ID, SECRET), "s3", REGION,
                         expires=expires).add_auth(request)
    return str(request.url)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9000/chat-attachments/t/c/0f8fad5b-d9cb-469f-a165-70867728950e",
    "https://chat-attachments.s3.eu-west-1.amazonaws.com/t/c/u",
    "https://S3.Example.COM:443/chat-attachments/t/c/u",
    "http://[::1]:9000/chat-attachments/t/c/u",
    "http://store:80/b/" + "t/c/a%20b~%C3%BC%2B",
])
@pytest.mark.parametrize("params", [
    {},
    {"response-content-type": "application/pdf",
     "response-content-disposition": "attachment; filename=\"a b/c.pdf\"; "
                                     "filename*=UTF-8''%C3%BC%20b"},
])
def test_the_signature_is_botocores(url: str, params: dict[str, str]) -> None:
    signer = QuerySigner(KEY_ID, SECRET, REGION)
    for now in (datetime(2026, 12, 1, 23, 59, 59, tzinfo=UTC),
                datetime(2026, 12, 2, 0, 0, 1, tzinfo=UTC)):  # the next day's key
        assert signer.sign(url, 300, params, now) == _botocore(url, 300, params, now)
