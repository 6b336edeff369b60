"""The gRPC status of a rate-limit refusal, assembled from serialized parts, is the status
``status_proto`` builds (grpc_errors' module docstring)."""

from __future__ import annotations

from google.rpc import status_pb2
from hypothesis import given
from hypothesis import strategies as st

from chat_api.transport.grpc_errors import status_proto, to_grpc_status
from chat_shared.errors import RateLimited

texts = st.text(min_size=0, max_size=80)


@given(cls=st.sampled_from(["send", "read", "write-other", "anon"]),
       scope=st.sampled_from(["user", "tenant", "client"]), subject=texts, policy=texts,
       retry_after=st.floats(min_value=0, max_value=100_000, allow_nan=False))
def test_a_refusal_status_is_the_one_status_proto_builds(cls: str, scope: str, subject: str,
                                                        policy: str,
                                                        retry_after: float) -> None:
    headers = {"RateLimit-Policy": policy, "RateLimit": f'"{cls}";r=0;t=1', "Retry-After": "1"}
    exc = RateLimited(cls, scope, subject, retry_after, headers)
    status = to_grpc_status(exc)
    trailing = dict(status.trailing_metadata)
    assert status_pb2.Status.FromString(trailing.pop("grpc-status-details-bin")) == \
        status_proto(exc)
    assert trailing == {k.lower(): v for k, v in headers.items()}
    assert status.details == exc.message
    assert status.code.name == "RESOURCE_EXHAUSTED"
