"""The tenancy tests' admin and call helper, on whichever mesh a module runs."""
import pytest

from tests.integration.mesh.tenant_client import TenantClient


@pytest.fixture(scope="module")
async def client(mesh):
    client = TenantClient(mesh)
    yield client
    await client.close()
