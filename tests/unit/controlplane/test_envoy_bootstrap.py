import yaml

from services.controlplane.bootstrap import BOOTSTRAP_TEMPLATE, render_bootstrap
from services.controlplane.resources import EnvoyLayout


def test_the_checked_in_bootstrap_is_accepted_by_envoy(envoy_validate):
    envoy_validate(bootstrap_text=BOOTSTRAP_TEMPLATE.read_text())


def test_a_rendered_bootstrap_is_accepted_by_envoy(envoy_validate):
    envoy_validate(bootstrap_text=render_bootstrap("127.0.0.1", 23456, 34567, "node-7"))


def test_render_fills_the_addresses_and_keeps_the_rest_of_the_file():
    rendered = yaml.safe_load(render_bootstrap("10.0.0.5", 23456, 34567, "node-7"))
    template = yaml.safe_load(BOOTSTRAP_TEMPLATE.read_text())
    assert rendered["node"] == {**template["node"], "id": "node-7"}
    assert rendered["admin"]["address"]["socket_address"]["port_value"] == 34567
    endpoint = rendered["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
    address = endpoint["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert address == {"address": "10.0.0.5", "port_value": 23456}
    assert rendered["dynamic_resources"] == template["dynamic_resources"]


def test_the_ads_connection_is_kept_alive_so_a_vanished_control_plane_is_noticed():
    (controlplane,) = yaml.safe_load(BOOTSTRAP_TEMPLATE.read_text())["static_resources"]["clusters"]
    options = controlplane["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    keepalive = options["explicit_http_config"]["http2_protocol_options"]["connection_keepalive"]
    layout = EnvoyLayout()  # the same PINGs as every other connection Envoy keeps
    assert keepalive == {"interval": f"{layout.keepalive_interval_seconds:g}s",
                         "timeout": f"{layout.keepalive_timeout_seconds:g}s"}
