"""The control plane: replica registry plus xDS (ADS) for Envoy."""
