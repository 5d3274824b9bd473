"""Envoy's bootstrap: deploy/envoy/bootstrap.yaml with the addresses filled in."""
from pathlib import Path

import yaml

BOOTSTRAP_TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "envoy" / "bootstrap.yaml"


def render_bootstrap(controlplane_host: str, controlplane_port: int, admin_port: int,
                     node_id: str, admin_host: str = "127.0.0.1") -> str:
    """The bootstrap file's text pointing at this control plane; write it where Envoy reads."""
    config = yaml.safe_load(BOOTSTRAP_TEMPLATE.read_text())
    config["node"]["id"] = node_id
    config["admin"]["address"]["socket_address"] = {
        "address": admin_host, "port_value": admin_port}
    (controlplane,) = [c for c in config["static_resources"]["clusters"]
                       if c["name"] == "controlplane"]
    (endpoint,) = controlplane["load_assignment"]["endpoints"][0]["lb_endpoints"]
    endpoint["endpoint"]["address"]["socket_address"] = {
        "address": controlplane_host, "port_value": controlplane_port}
    return yaml.safe_dump(config, sort_keys=False)
