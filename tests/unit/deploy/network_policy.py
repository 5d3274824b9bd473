"""Kubernetes NetworkPolicy ingress semantics, enough to ask of rendered manifests whether one
pod may connect to a named port of another: a pod no policy selects takes anything; a pod
some policy selects takes only what one of those policies' rules allows (peers by pod and/or
namespace selector, ports by name or number)."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict
    ports: dict
    """Container port numbers by name (for a target)."""


def selects(selector: dict | None, labels: dict) -> bool:
    """A label selector: matchLabels and matchExpressions; {} selects everything."""
    selector = selector or {}
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get(
            "values", [])
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _peer_matches(peer: dict, policy_namespace: str, source: Pod) -> bool:
    namespace_labels = {"kubernetes.io/metadata.name": source.namespace}
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], namespace_labels):
            return False
    elif source.namespace != policy_namespace:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], source.labels)


def _port_matches(entry: dict, target: Pod, port_name: str) -> bool:
    port = entry.get("port")
    return port is None or port == port_name or port == target.ports.get(port_name)


def allowed(policies: list[dict], source: Pod, target: Pod, port_name: str) -> bool:
    """Whether `source` may open a connection to `target`'s port `port_name`."""
    applying = [p for p in policies
                if p["metadata"]["namespace"] == target.namespace
                and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
                and selects(p["spec"]["podSelector"], target.labels)]
    if not applying:
        return True
    for policy in applying:
        for rule in policy["spec"].get("ingress", []):
            peers, ports = rule.get("from", []), rule.get("ports", [])
            if (not peers or any(_peer_matches(peer, policy["metadata"]["namespace"], source)
                                 for peer in peers)) \
                    and (not ports or any(_port_matches(entry, target, port_name)
                                          for entry in ports)):
                return True
    return False
