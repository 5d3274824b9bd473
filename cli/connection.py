"""Where the CLI's calls go and the key they carry: --endpoint, --api-key, --tls for the public
endpoint, --controlplane for the control plane's own operator RPCs."""
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import typer

from cli.errors import InputError
from meshllm.api.auth.v1 import auth_pb2_grpc
from meshllm.api.controlplane.v1 import scaling_pb2_grpc
from meshllm.api_key import bearer

DEFAULT_ENDPOINT = "localhost:8080"
ENDPOINT_ENV = "MESHLLM_ENDPOINT"
# The control plane's registry and scaling port, where `make up` runs it; not behind Envoy.
DEFAULT_CONTROLPLANE = "localhost:18000"
CONTROLPLANE_ENV = "MESHLLM_CONTROLPLANE_ADDRESS"
# Where `make up` keeps the local mesh's admin key, relative to the repository it runs in.
DEV_KEY_FILE = Path(".meshllm") / "run" / "dev-api-key"
# Operator calls are small; a mesh that has not answered by then is not going to.
CALL_TIMEOUT_SECONDS = 15.0


def resolve_api_key(given: str | None, dev_key_file: Path = DEV_KEY_FILE) -> str:
    """--api-key (or MESHLLM_API_KEY, which typer folds into it), else the local mesh's key."""
    if given:
        return given.strip()
    try:
        key = dev_key_file.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        key = ""
    except OSError as error:
        raise InputError(f"no API key given, and {dev_key_file} cannot be read: "
                         f"{error.strerror}") from None
    if not key:
        raise InputError("no API key: pass --api-key or set MESHLLM_API_KEY (a local mesh "
                         f"started with `make up` keeps its admin key in {dev_key_file})")
    return key


class DeadlinedCalls:
    """A synchronous stub whose every call carries a deadline and the metadata given."""

    def __init__(self, stub, metadata: tuple[tuple[str, str], ...] = ()):
        self._stub = stub
        self._metadata = metadata

    def __getattr__(self, method: str):
        call = getattr(self._stub, method)
        return lambda request: call(request, metadata=self._metadata,
                                    timeout=CALL_TIMEOUT_SECONDS)


@dataclass
class Connection:
    """The endpoint options of one command line; the channel opens at the first call, so
    `--help` and input errors never need a key or a network."""

    endpoint: str
    api_key: str | None
    tls: bool
    controlplane: str = DEFAULT_CONTROLPLANE
    _channel: grpc.Channel | None = field(default=None, repr=False)
    _controlplane_channel: grpc.Channel | None = field(default=None, repr=False)

    def public_channel(self) -> grpc.Channel:
        """The channel to the public endpoint, opened at the first call."""
        if self._channel is None:
            self._channel = (
                grpc.secure_channel(self.endpoint, grpc.ssl_channel_credentials())
                if self.tls else grpc.insecure_channel(self.endpoint))
        return self._channel

    def admin(self) -> DeadlinedCalls:
        """meshllm.auth.v1.AuthService, the admin API."""
        key = resolve_api_key(self.api_key)
        return DeadlinedCalls(auth_pb2_grpc.AuthServiceStub(self.public_channel()), bearer(key))

    def scaling(self) -> DeadlinedCalls:
        """meshllm.controlplane.v1.ScalingService. The control plane's port is not public:
        plaintext and no key, like the replicas' own registrations on it."""
        if self._controlplane_channel is None:
            self._controlplane_channel = grpc.insecure_channel(self.controlplane)
        return DeadlinedCalls(scaling_pb2_grpc.ScalingServiceStub(self._controlplane_channel))

    def close(self) -> None:
        for channel in (self._channel, self._controlplane_channel):
            if channel is not None:
                channel.close()
        self._channel = self._controlplane_channel = None


def admin_api(ctx: typer.Context) -> DeadlinedCalls:
    """The admin API of the mesh the command line points at."""
    return ctx.find_object(Connection).admin()


def scaling_api(ctx: typer.Context) -> DeadlinedCalls:
    """The scaling API of the control plane the command line points at."""
    return ctx.find_object(Connection).scaling()
